"""Feature cache: run the frozen layers below a cut once over a split, keep their outputs on disk, memory-mapped,
and train only what lies above the cut.

The cut is the output of the last frozen stage before anything random or trainable (`cut_for`). The cache key
covers everything the features depend on: weights hash, the data files' contents, image size, resize mode,
interpolation, preprocessing, network shape, cut and storage dtype. The stored metadata, the array file's
sha256 among it, is checked on load; a damaged entry is recomputed after a one-line note.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_path
from vgg_jax.paths import cache_dir, file_digest

PREPROCESSING = "keras-caffe-bgr-mean/v1"
STORAGE = {"float32": "<f4", "bfloat16": "<u2"}  # bfloat16 is stored as its raw 16 bits (numpy has no bfloat16)
DEFAULT_CUTS = ("fc2", "fc1", "block5_pool", "block4_pool")  # on by default: small enough, and worth it
HASH_THREADS = 8  # hashing waits on reads more than on the CPU


class Features(NamedTuple):
    """One split's cut outputs in source order; ok is False where the image failed to decode."""

    features: np.ndarray  # [N, *cut shape], float32 or bfloat16; a read-only memmap when loaded
    ok: np.ndarray  # bool [N]
    labels: np.ndarray  # int32 [N]


def cut_for(top: str, freeze_through: str, dropout: float) -> str | None:
    """The stage whose output the cache holds: the last frozen one before anything random or trainable.

    The recipe (fc top, fc2 frozen) with dropout: fc1 (fc1's dropout is random); without dropout: fc2.
    fc1 frozen: fc1. block5, or a pooled/MLP top with everything frozen: block5_pool. blockN: blockN_pool.
    Nothing frozen: None."""
    if freeze_through == "none":
        return None
    if freeze_through.startswith("block"):
        return f"{freeze_through}_pool"
    if top != "fc":
        return "block5_pool"
    return "fc2" if freeze_through == "fc2" and dropout == 0 else "fc1"


def contents_digest(paths: list[str], say: Callable[[str], None] = print) -> str:
    """sha256 over every file's own sha256, in order: an edit that keeps size and mtime (cp -p, rsync -a)
    still changes it. Files are read in a thread pool (hashlib releases the GIL)."""
    if len(paths) >= 1000:
        say(f"feature cache: hashing {len(paths):,} image files (their contents key the cache)")

    def one(path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return hashlib.file_digest(f, "sha256").digest()
        except OSError as e:  # unreadable files are skipped and masked by the pipeline; key them by the error
            return hashlib.sha256(f"unreadable:{e.errno}".encode()).digest()

    total = hashlib.sha256()
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        for digest in pool.map(one, paths):
            total.update(digest)
    return total.hexdigest()


def cache_key(fields: Mapping[str, Any]) -> str:
    """24 hex digits of the sha256 of the key fields as canonical JSON."""
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode()).hexdigest()[:24]


def features_dir(fields: Mapping[str, Any]) -> Path:
    """The cache folder of one key: $VGG_JAX_CACHE/features/<cache_key>."""
    return cache_dir() / "features" / cache_key(fields)


def load(fields: Mapping[str, Any], split: str, count: int, say: Callable[[str], None] = print) -> Features | None:
    """Cached features of `split`, memory-mapped; None when absent, or damaged (said in one line)."""
    d = features_dir(fields)
    meta_path = d / f"{split}.json"
    if not meta_path.exists():
        return None
    try:
        return _load(d, split, json.loads(meta_path.read_text()), fields, count)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        say(f"feature cache {d}/{split}: damaged ({_reason(e)}); recomputing")
        return None


def _load(d: Path, split: str, meta: Any, fields: Mapping[str, Any], count: int) -> Features:
    if not isinstance(meta, dict) or meta.get("fields") != json.loads(json.dumps(dict(fields))):
        raise ValueError("its metadata does not match its key")
    shape, dtype = (count, *meta["shape"]), meta["dtype"]
    if meta.get("count") != count or dtype not in STORAGE:
        raise ValueError(f"it holds {meta.get('count')} examples of {dtype}, expected {count}")
    path = d / f"{split}.npy"
    stored = np.load(path, mmap_mode="r")  # truncated files fail here: the header promises more than there is
    if not isinstance(stored, np.ndarray):
        raise ValueError("its features file is not an .npy array")
    if stored.shape != shape or stored.dtype != np.dtype(STORAGE[dtype]):
        raise ValueError(f"shape {stored.shape} {stored.dtype}, expected {shape} {STORAGE[dtype]}")
    if file_digest(path) != meta.get("sha256"):
        raise ValueError("checksum mismatch")
    ok, labels = np.ones(count, bool), np.asarray(meta["labels"], np.int32)
    ok[np.asarray(meta["failed"], np.int64)] = False
    if labels.shape != (count,):
        raise ValueError(f"{labels.shape[0]} labels for {count} examples")
    return Features(_logical(stored, dtype), ok, labels)


def _logical(stored: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes

        return stored.view(ml_dtypes.bfloat16)
    return stored


def _reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "its features file is missing"
    if isinstance(e, json.JSONDecodeError):
        return "unreadable metadata"
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def nbytes(count: int, shape: tuple[int, ...], dtype: str) -> int:
    """Bytes the features of `count` examples take on disk."""
    return count * int(np.prod(shape)) * np.dtype(STORAGE[dtype]).itemsize


def check_space(directory: Path, needed: int, what: str) -> str:
    """The line that says what the cache will take and how much space is free; UserError when it does not fit."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = free_bytes(probe)
    line = f"feature cache: {what} = {_size(needed)}; {_size(free)} free in {probe}"
    if needed > free:
        raise UserError(
            f"{directory}: the feature cache needs {_size(needed)} ({what}), only {_size(free)} free; "
            "free some space, point VGG_JAX_CACHE at a bigger disk, or pass `cache_features=False`"
        )
    return line


def free_bytes(directory: Path) -> int:
    """Free space for us in `directory`."""
    return shutil.disk_usage(directory).free


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def compute(
    fields: Mapping[str, Any],
    split: str,
    batches: Iterable[Mapping[str, np.ndarray]],
    backbone: Callable[[np.ndarray], Any],
    count: int,
    shape: tuple[int, ...],
    dtype: str,
) -> Features:
    """Runs `backbone` over eval batches (example i at position i, padded to full batches) with a progress bar,
    writing rows straight into the cache file; the metadata (with the file's sha256) lands last, atomically."""
    from tqdm import tqdm

    d = features_dir(fields)
    ok, labels = np.zeros(count, bool), np.zeros(count, np.int32)
    bar = tqdm(total=count, desc=f"{split} features to {fields['cut']}", unit="img", dynamic_ncols=True,
               mininterval=1.0)  # fmt: skip
    with atomic_path(d / f"{split}.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=STORAGE[dtype], shape=(count, *shape))
        filled, pending = 0, None
        for batch in batches:  # one batch in flight on the device while the previous one is written
            result = (backbone(batch["image"]), batch["mask"], batch["label"])
            if pending is not None:
                filled = _write(out, ok, labels, filled, *pending, dtype)
                bar.update(min(filled, count) - bar.n)
            pending = result
        if pending is not None:
            filled = _write(out, ok, labels, filled, *pending, dtype)
        bar.update(min(filled, count) - bar.n)
        bar.close()
        if filled < count:
            raise RuntimeError(f"feature pass produced {filled} rows for {count} examples")
        out.flush()
        del out
        digest = file_digest(tmp)
    meta = {"fields": dict(fields), "count": count, "shape": list(shape), "dtype": dtype, "sha256": digest,
            "labels": labels.tolist(), "failed": np.flatnonzero(~ok).tolist()}  # fmt: skip
    with atomic_path(d / f"{split}.json") as tmp:
        tmp.write_text(json.dumps(meta))
    return load(fields, split, count) or _refuse_reload(d, split)


def _write(out, ok, labels, filled: int, features, mask, label, dtype: str) -> int:
    n = min(len(mask), len(out) - filled)
    rows = np.asarray(features)[:n]
    out[filled : filled + n] = rows.view(np.uint16) if dtype == "bfloat16" else rows.astype(np.float32, copy=False)
    ok[filled : filled + n] = np.asarray(mask, bool)[:n]
    labels[filled : filled + n] = np.asarray(label, np.int32)[:n]
    return filled + n


def _refuse_reload(d: Path, split: str) -> Features:
    raise UserError(f"{d}/{split}: the feature cache just written cannot be read back; is the disk failing?")


def gather(cached: Features, index: np.ndarray) -> dict:
    """Rows `index` of a split (sorted reads from the memmap, returned in `index` order) as a step's inputs."""
    order = np.argsort(index, kind="stable")
    rows = np.empty((len(index), *cached.features.shape[1:]), cached.features.dtype)
    rows[order] = cached.features[index[order]]
    return {"inputs": rows, "label": cached.labels[index], "mask": cached.ok[index]}
