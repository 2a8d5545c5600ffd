"""Params files: safetensors with JSON metadata, written atomically, read back as nested numpy dicts.

numpy + safetensors only (no jax), so the converter can write the format the package reads.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.faults import maybe_kill
from vgg_jax.fileio import atomic_path
from vgg_jax.models.arch import DEPTHS

FORMAT = "vgg-jax-params/1"
# Params are float32 throughout (model, optimizer, checkpoints; --dtype sets compute only). Half-precision files
# are widened exactly, as the converter does, so an export in float16/bfloat16 loads as the same numbers.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
NO_TOP_HINT = "use include_top=False or the full weights file"


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
    """Writes nested params (as float32) and JSON-able metadata to a safetensors file, atomically.

    The bytes are streamed through fileio.atomic_path rather than safetensors' save_file, which writes its own
    `.tmpXXXXXX` beside the target (left behind by a kill) and raises SafetensorError, not OSError, on a full disk.
    """
    flat = {k: np.require(np.asarray(v, dtype="<f4"), requirements="C") for k, v in flatten(params).items()}
    header: dict[str, Any] = {"__metadata__": {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}}
    offset = 0
    for name in sorted(flat):
        header[name] = {
            "dtype": "F32",
            "shape": list(flat[name].shape),
            "data_offsets": [offset, offset + flat[name].nbytes],
        }
        offset += flat[name].nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data 8-byte aligned, as safetensors writes it
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name in sorted(flat):
            f.write(memoryview(flat[name]).cast("B"))
            f.flush()
            maybe_kill("params-write")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata a params file was saved with (values JSON-decoded)."""
    with _open(path) as f:
        raw = f.metadata() or {}
    if raw.get("format") != FORMAT:
        raise UserError(
            f"{path}: not a vgg-jax params file (no '{FORMAT}' metadata); convert Keras files with `vgg-jax convert`"
        )
    meta = {k: _decode_field(path, k, v) for k, v in raw.items() if k != "format"}
    if "architecture" in meta and not (isinstance(meta["architecture"], str) and meta["architecture"] in DEPTHS):
        raise UserError(
            f"{path}: metadata field 'architecture' is {meta['architecture']!r}, not one of {', '.join(DEPTHS)}; "
            "the params file is damaged"
        )
    return meta


def _decode_field(path: str | os.PathLike, key: str, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        raise UserError(f"{path}: metadata field {key!r} is not valid JSON; the params file is damaged") from None


def load(
    path: str | os.PathLike, like: Mapping[str, Any] | None = None, no_top_hint: str = NO_TOP_HINT
) -> dict[str, Any]:
    """Reads a params file into nested numpy arrays.

    With `like` (a pytree of arrays or ShapeDtypeStructs), reads exactly like's keys, checks
    each shape, and ignores extra keys (so a full VGG16 file serves an include_top=False model).
    A file lacking only classifier-top layers is refused as a no-top file, with `no_top_hint`.
    """
    with _open(path) as f:
        keys = set(f.keys())
        if like is None:
            return unflatten({k: _read_tensor(f, path, k) for k in sorted(keys)})
        want = flatten(like)
        missing = sorted(set(want) - keys)
        if missing:
            top = [k for k in missing if k.split("/")[0] in ("fc1", "fc2", "predictions")]
            if top and len(top) == len(missing):
                raise UserError(
                    f"{path}: has no classifier top ({', '.join(sorted({k.split('/')[0] for k in top}))}): "
                    f"it is a no-top file; {no_top_hint}"
                )
            raise UserError(f"{path}: missing {len(missing)} parameter(s): {', '.join(missing[:4])}")
        out = {}
        for k, spec in want.items():
            shape = tuple(f.get_slice(k).get_shape())
            if shape != tuple(spec.shape):
                raise UserError(f"{path}: {k} has shape {shape}, the model expects {tuple(spec.shape)}")
            out[k] = _read_tensor(f, path, k)
        return unflatten(out)


def load_checked(
    path: str | os.PathLike,
    like: Mapping[str, Any],
    architecture: str,
    wanted: str | None = None,
    no_top_hint: str = NO_TOP_HINT,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params read exactly as `like`, metadata) of a file holding `architecture` params (or not saying which).

    The one loading path of the factories, the trainer's backbone and the Predictor. `wanted` words the
    refusal of another architecture ("but --arch is vgg16"; default "not vgg16"); `no_top_hint` that of a
    no-top file where `like` has fc1/fc2.
    """
    meta = read_metadata(path)
    if meta.get("architecture") not in (None, architecture):
        raise UserError(f"{path}: holds {meta['architecture']} params, {wanted or f'not {architecture}'}")
    return load(path, like=like, no_top_hint=no_top_hint), meta


def _read_tensor(f, path: str | os.PathLike, key: str) -> np.ndarray:
    """One tensor as finite float32: float16/bfloat16 widened exactly, float64 rounded; anything else refused."""
    stored = f.get_slice(key).get_dtype()
    if stored not in FLOAT_DTYPES:
        raise UserError(f"{path}: {key} holds {_dtype_name(stored)} values, not floating-point weights; refused")
    if stored == "BF16":
        import ml_dtypes
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range becomes inf: counted below
        array = f.get_tensor(key).astype(np.float32, copy=False)
        total = array.sum(dtype=np.float64)  # a float64 sum of float32 values overflows only on NaN/inf
    if not np.isfinite(total):
        bad = array.size - np.count_nonzero(np.isfinite(array))
        rounded = " once rounded to float32" if stored == "F64" else ""
        raise UserError(
            f"{path}: {key} holds {bad:,} non-finite values (NaN/inf){rounded}; the weights file is damaged: "
            "convert or export it again"
        )
    return array


def _dtype_name(stored: str) -> str:
    """safetensors' dtype codes in numpy's words: 'I64' -> 'int64', 'BOOL' -> 'bool', 'U8' -> 'uint8'."""
    if stored == "BOOL":
        return "bool"
    prefix = {"I": "int", "U": "uint", "F": "float"}.get(stored[0])
    return prefix + stored[1:].lower() if prefix else stored.lower()


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
