"""Feature cache: run the frozen backbone once over a split, keep the features on disk, train the head on them.

The cache key covers everything the features depend on (weights hash, data fingerprint, image size,
resize mode, preprocessing, network shape), and the stored metadata, the arrays' sha256 among it, is checked
again on load, so a stale or foreign cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vgg_jax.fileio import atomic_path
from vgg_jax.paths import cache_dir, file_digest

PREPROCESSING = "keras-caffe-bgr-mean/v1"


class Features(NamedTuple):
    """One split's backbone outputs in source order; ok is False where the image failed to decode."""

    features: np.ndarray  # float32 [N, D]
    ok: np.ndarray  # bool [N]
    labels: np.ndarray  # int32 [N]


def cache_key(fields: Mapping[str, Any]) -> str:
    """24 hex digits of the sha256 of the key fields as canonical JSON."""
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode()).hexdigest()[:24]


def features_dir(fields: Mapping[str, Any]) -> Path:
    """The cache folder of one key: $VGG_JAX_CACHE/features/<cache_key>."""
    return cache_dir() / "features" / cache_key(fields)


def load(fields: Mapping[str, Any], split: str, count: int, say: Callable[[str], None] = print) -> Features | None:
    """Cached features of `split`, or None when absent, foreign or stale (a checksum mismatch is said)."""
    d = features_dir(fields)
    try:
        meta = json.loads((d / f"{split}.json").read_text())
        if not _same_key(meta, fields, count):
            return None
        if file_digest(d / f"{split}.npz") != meta.get("sha256"):
            say(f"feature cache {d}/{split}: checksum mismatch; recomputing")
            return None
        with np.load(d / f"{split}.npz") as stored:
            cached = Features(stored["features"], stored["ok"], stored["labels"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return cached if _fits(cached, count, meta.get("dim")) else None


def _same_key(meta: Any, fields: Mapping[str, Any], count: int) -> bool:
    return (
        isinstance(meta, dict)
        and meta.get("fields") == json.loads(json.dumps(dict(fields)))
        and meta.get("count") == count
    )


def _fits(cached: Features, count: int, dim: Any) -> bool:
    """Shapes and dtypes as store() writes them: features float32 [count, dim], ok bool [count], labels int32 [count]."""
    features, ok, labels = cached
    return (
        features.dtype == np.float32 and features.shape == (count, dim)
        and ok.dtype == bool and ok.shape == (count,)
        and labels.dtype == np.int32 and labels.shape == (count,)
    )  # fmt: skip


def compute(batches: Iterable[Mapping[str, np.ndarray]], backbone: Callable[[np.ndarray], Any], count: int) -> Features:
    """Runs `backbone` over eval batches (example i at position i, padded to full batches), in source order."""
    rows, ok, labels = [], [], []
    for batch in batches:
        rows.append(np.asarray(backbone(batch["image"]), np.float32))
        ok.append(np.asarray(batch["mask"], bool))
        labels.append(np.asarray(batch["label"], np.int32))
    if not rows or sum(len(r) for r in rows) < count:
        raise RuntimeError(f"feature pass produced {sum(len(r) for r in rows)} rows for {count} examples")
    return Features(np.concatenate(rows)[:count], np.concatenate(ok)[:count], np.concatenate(labels)[:count])


def store(fields: Mapping[str, Any], split: str, cached: Features) -> Path:
    """Writes features and their metadata (with the .npz's sha256) atomically; the .json lands last, so a
    half-written cache is never read."""
    d = features_dir(fields)
    with atomic_path(d / f"{split}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, features=cached.features, ok=cached.ok, labels=cached.labels)
        digest = file_digest(tmp)
    meta = {"fields": dict(fields), "count": len(cached.features), "dim": int(cached.features.shape[1])}
    with atomic_path(d / f"{split}.json") as tmp:
        tmp.write_text(json.dumps({**meta, "sha256": digest}))
    return d
