"""Input pipeline: image folders or tfds -> numpy batches {"image": uint8[B,H,W,3], "label": int32[B], "mask": bool[B]}.

    source = open_source("data/dogscats", "train")     # lists and checks files; prints nothing
    print(source.describe())                             # size, classes, skipped files: before step 1
    for batch in train_batches(source, 32, seed=0, epoch=e): ...

Modules: source (`Source`), folder (folder layouts), checks (broken-file checks), decode (one example:
vgg_jax.data.resize + augmentation), batching (plans, and grain running them), tfds (tfds:NAME, under the
`tfds` extra). Orders are index arithmetic in numpy, so a batch's contents are a pure function of
(seed, epoch, step, process) and a resumed run jumps to `start_batch` without decoding what it skips.
Importing this package loads neither jax, grain nor tensorflow: process_index/process_count are ints.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from vgg_jax.data.batching import eval_batches, eval_steps, permutation, steps_per_epoch, train_batches
from vgg_jax.data.source import UNLABELLED, Source, printable
from vgg_jax.errors import UserError

__all__ = [
    "DEFAULT_VALID_FRACTION",
    "UNLABELLED",
    "Source",
    "eval_batches",
    "eval_steps",
    "open_source",
    "overlap",
    "overlap_warning",
    "permutation",
    "steps_per_epoch",
    "train_batches",
]


DEFAULT_VALID_FRACTION = 0.1  # the share of train the trainer holds out of a folder with no valid/ folder


def open_source(
    spec: str | os.PathLike,
    split: str = "train",
    *,
    valid_fraction: float | None = None,
    seed: int = 0,
    manual_dir: str | None = None,
    download: bool = True,
    labels_from_filename: str | None = None,
    valid_fraction_default: float | None = None,
) -> Source:
    """A folder (ROOT/{train,valid}/{class}/*, ROOT/{class}/*, ROOT/train/<label>.<id>.jpg, or unlabelled images) or
    "tfds:NAME[:SPLIT]".

    `split` is "train", "valid" or "test" (the unlabelled test1/ folder). Without a valid/ folder
    (or tfds validation split), `valid_fraction` holds out that share of train, seeded by `seed`; a folder
    without one and without `valid_fraction` falls back on `valid_fraction_default` (the trainer passes
    DEFAULT_VALID_FRACTION). `labels_from_filename` (a regex whose first group is the label) labels a flat folder.
    Files are checked structurally here, so `Source.skipped` is complete before training starts.
    """
    spec = os.fspath(spec)
    if spec.startswith("tfds:") and labels_from_filename is not None:
        raise UserError(f"{spec}: `labels_from_filename` applies to image folders only; drop it for a tfds data set")
    if spec.startswith("tfds:"):
        from vgg_jax.data.tfds import open_tfds

        return open_tfds(spec, split, valid_fraction=valid_fraction, manual_dir=manual_dir, download=download)
    from vgg_jax.data.folder import open_folder

    return open_folder(spec, split, valid_fraction=valid_fraction, seed=seed, labels_from_filename=labels_from_filename,
                       valid_fraction_default=valid_fraction_default)  # fmt: skip


def overlap(train: Source, valid: Source) -> list[tuple[str, str]]:
    """(train path, valid path) of every valid file whose bytes equal a train file's, in valid order.

    Sizes first (one stat per file), then sha256 of only the files whose size occurs on both sides:
    a few seconds at most for 25,000 photos. tfds sources have no files to compare: [].
    """
    if train.paths is None or valid.paths is None:
        return []
    train_sizes, valid_sizes = _sizes(train.paths), _sizes(valid.paths)
    by_size = defaultdict(list)
    for path, size in zip(train.paths, train_sizes):
        by_size[size].append(path)
    candidates = [(p, by_size[s]) for p, s in zip(valid.paths, valid_sizes) if s >= 0 and s in by_size]
    to_hash = sorted({p for v, ts in candidates for p in (v, *ts)})
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL on large buffers
        digests = dict(zip(to_hash, pool.map(_sha256, to_hash)))
    pairs = []
    for v, ts in candidates:
        match = next((t for t in ts if digests[v] is not None and digests[t] == digests[v]), None)
        if match is not None:
            pairs.append((match, v))
    return pairs


def overlap_warning(train: Source, valid: Source, max_listed: int = 3) -> str | None:
    """The data report's line about files found in both train and valid (same bytes), or None when there are none."""
    pairs = overlap(train, valid)
    if not pairs:
        return None
    root = os.path.commonpath([train.folder or "/", valid.folder or "/"])
    listed = ", ".join(
        f"{printable(os.path.relpath(t, root))} = {printable(os.path.relpath(v, root))}" for t, v in pairs[:max_listed]
    )
    more = f", +{len(pairs) - max_listed} more" if len(pairs) > max_listed else ""
    return f"warning: {len(pairs):,} images appear in both train and valid (same bytes): {listed}{more}"


def _sizes(paths: list[str]) -> list[int]:
    out = []
    for path in paths:
        try:
            out.append(os.stat(path).st_size)
        except OSError:
            out.append(-1)
    return out


def _sha256(path: str) -> str | None:
    from vgg_jax.paths import file_digest

    try:
        return file_digest(path)
    except OSError:
        return None
