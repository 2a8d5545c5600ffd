"""Params files: safetensors with JSON metadata, written atomically, read back as nested numpy dicts.

numpy + safetensors only (no jax), so the converter can write the format the package reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_path

FORMAT = "vgg-jax-params/1"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"fc1": {"kernel": a}} -> {"fc1/kernel": a}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"fc1/kernel": a} -> {"fc1": {"kernel": a}}."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save(path: str | os.PathLike, params: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """Writes nested params and JSON-able metadata to a safetensors file, atomically."""
    from safetensors.numpy import save_file

    flat = {k: np.ascontiguousarray(v) for k, v in flatten(params).items()}
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata a params file was saved with (values JSON-decoded)."""
    with _open(path) as f:
        raw = f.metadata() or {}
    if raw.get("format") != FORMAT:
        raise UserError(
            f"{path}: not a vgg-jax params file (no '{FORMAT}' metadata); convert Keras files with `vgg-jax convert`"
        )
    return {k: json.loads(v) for k, v in raw.items() if k != "format"}


def load(path: str | os.PathLike, like: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Reads a params file into nested numpy arrays.

    With `like` (a pytree of arrays or ShapeDtypeStructs), reads exactly like's keys, checks
    each shape, and ignores extra keys (so a full VGG16 file serves an include_top=False model).
    """
    with _open(path) as f:
        keys = set(f.keys())
        if like is None:
            return unflatten({k: f.get_tensor(k) for k in sorted(keys)})
        want = flatten(like)
        missing = sorted(set(want) - keys)
        if missing:
            top = [k for k in missing if k.split("/")[0] in ("fc1", "fc2", "predictions")]
            if top and len(top) == len(missing):
                raise UserError(
                    f"{path}: has no classifier top ({', '.join(sorted({k.split('/')[0] for k in top}))}): "
                    "it is a no-top file; use include_top=False or the full weights file"
                )
            raise UserError(f"{path}: missing {len(missing)} parameter(s): {', '.join(missing[:4])}")
        out = {}
        for k, spec in want.items():
            array = f.get_tensor(k)
            if tuple(array.shape) != tuple(spec.shape):
                raise UserError(f"{path}: {k} has shape {tuple(array.shape)}, the model expects {tuple(spec.shape)}")
            out[k] = array
        return unflatten(out)


def load_keys(path: str | os.PathLike) -> set[str]:
    """Top-level layer names in a params file, without reading any array."""
    with _open(path) as f:
        return {k.split("/")[0] for k in f.keys()}


@contextmanager
def _open(path: str | os.PathLike):
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such params file")
    try:
        handle = safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors params file ({e})") from None
    with handle as f:
        yield f
