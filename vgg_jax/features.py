"""Feature cache: run the frozen backbone once over a split, keep the features on disk, train the head on them.

The cache key covers everything the features depend on (weights hash, data fingerprint, image size,
resize mode, preprocessing, network shape), and the stored metadata is checked again on load, so a
stale or foreign cache is never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vgg_jax.fileio import atomic_path
from vgg_jax.paths import cache_dir

PREPROCESSING = "keras-caffe-bgr-mean/v1"


class Features(NamedTuple):
    """One split's backbone outputs in source order; ok is False where the image failed to decode."""

    features: np.ndarray  # float32 [N, D]
    ok: np.ndarray  # bool [N]
    labels: np.ndarray  # int32 [N]


def cache_key(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode()).hexdigest()[:24]


def features_dir(fields: Mapping[str, Any]) -> Path:
    return cache_dir() / "features" / cache_key(fields)


def load(fields: Mapping[str, Any], split: str, count: int) -> Features | None:
    """Cached features of `split`, or None when absent, foreign or stale."""
    d = features_dir(fields)
    try:
        meta = json.loads((d / f"{split}.json").read_text())
        with np.load(d / f"{split}.npz") as stored:
            cached = Features(stored["features"], stored["ok"], stored["labels"])
    except (OSError, ValueError, KeyError):
        return None
    if (
        meta.get("fields") != json.loads(json.dumps(dict(fields)))
        or meta.get("count") != count
        or len(cached.features) != count
    ):
        return None
    return cached


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
    """Writes features and their metadata atomically; the .json lands last, so a half-written cache is never read."""
    d = features_dir(fields)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / f"{split}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, features=cached.features, ok=cached.ok, labels=cached.labels)
    with atomic_path(d / f"{split}.json") as tmp:
        tmp.write_text(
            json.dumps({"fields": dict(fields), "count": len(cached.features), "dim": int(cached.features.shape[1])})
        )
    return d
