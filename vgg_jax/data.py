"""Input pipeline: image folders or tfds -> numpy batches {"image": uint8[B,H,W,3], "label": int32[B], "mask": bool[B]}.

    source = open_source("data/dogscats", "train")     # lists and checks files; prints nothing
    print(source.describe())                             # size, classes, skipped files: before step 1
    for batch in train_batches(source, 32, seed=0, epoch=e): ...

Orders are index arithmetic in numpy, so a batch's contents are a pure function of (seed, epoch,
step, process) and a resumed run jumps to `start_batch` without decoding what it skips. Decoding
runs in tf.data threads (data_decode). Nothing here imports jax: process_index/process_count are ints.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vgg_jax.data_source import UNLABELLED, Source, printable
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
        raise UserError(f"{spec}: --labels-from-filename applies to image folders only; drop it for a tfds data set")
    if spec.startswith("tfds:"):
        from vgg_jax import data_tfds

        return data_tfds.open_tfds(spec, split, valid_fraction=valid_fraction, manual_dir=manual_dir, download=download)
    from vgg_jax.data_folder import open_folder

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


def steps_per_epoch(source: Source, batch_size: int, process_count: int = 1) -> int:
    """Training steps in one epoch: the remainder (< batch_size * process_count examples) is dropped.

    Each epoch draws a new permutation, so a dropped example is seen in other epochs.
    """
    return source.num_examples // (batch_size * process_count)


def eval_steps(source: Source, batch_size: int, process_count: int = 1) -> int:
    """Evaluation batches per process: every example once, the last global batch padded."""
    return -(-source.num_examples // (batch_size * process_count))


def train_batches(
    source: Source,
    batch_size: int,
    *,
    image_size: int = 224,
    resize: str = "squash",
    interpolation: str = "nearest",
    seed: int = 0,
    epoch: int = 0,
    augment: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
    threads: int | None = None,
) -> Iterator[dict]:
    """One epoch of shuffled training batches for this process: {"image", "label", "mask"}, static shapes.

    Global step s takes positions [s*B*P, (s+1)*B*P) of a permutation drawn from (seed, epoch);
    process p gets the p-th block of B, so processes read disjoint shards. `mask` is all True
    unless a file failed to decode (then its slot is zeroed and masked: weight the loss by mask).
    Images are decoded and resized by vgg_jax.resize (`resize` mode, `interpolation`), as `load_image` does.
    """
    _check_batching(source, batch_size, process_index, process_count)
    if not source.labelled:
        raise UserError(
            f"{source.name}: unlabelled images cannot be trained on; point the data at a folder with class subfolders"
        )
    steps = steps_per_epoch(source, batch_size, process_count)
    if steps == 0:
        raise UserError(
            f"{source.name}: {source.num_examples} examples are fewer than one global batch of {batch_size * process_count}"
        )
    if not 0 <= start_batch <= steps:
        raise UserError(f"start_batch must be in [0, {steps}] (steps per epoch). Received: start_batch={start_batch}")
    pos = _positions(steps, batch_size, process_count, process_index)[start_batch * batch_size :]
    slots = np.arange(len(pos))  # local slots count from start_batch
    key = _mix(seed, epoch) if augment else None
    if source.tfds is not None:
        from vgg_jax import data_tfds

        elements = data_tfds.stream_elements(source.tfds, pos, slots, shuffle_key=_mix(seed, epoch))
        name = lambda k: f"{source.name} record at shuffled position {pos[k]}"  # noqa: E731
    else:
        index = permutation(source.num_examples, seed, epoch)[pos]
        elements, name = _file_elements(source, index, slots), lambda k: source.paths[index[k]]  # noqa: E731
    stream = _decode(elements, len(pos), batch_size, image_size, resize, interpolation, key, threads)
    yield from _assemble(stream, steps - start_batch, batch_size, image_size, source, slots, name, with_ids=False)


def eval_batches(
    source: Source,
    batch_size: int,
    *,
    image_size: int = 224,
    resize: str = "squash",
    interpolation: str = "nearest",
    process_index: int = 0,
    process_count: int = 1,
    threads: int | None = None,
) -> Iterator[dict]:
    """Every example exactly once, in order: {"image", "label", "mask", "id"}; padding slots are masked.

    All processes yield `eval_steps(...)` batches of exactly `batch_size`, so nothing recompiles and
    multi-host collectives stay in step. Padding has image 0, label 0, id "".
    Images are decoded and resized by vgg_jax.resize (`resize` mode, `interpolation`), as `load_image` does.
    """
    _check_batching(source, batch_size, process_index, process_count)
    steps = eval_steps(source, batch_size, process_count)
    pos = _positions(steps, batch_size, process_count, process_index)
    pos = pos[pos < source.num_examples]  # example g sits at global position g: eval order is source order
    slots = _local_slots(pos, batch_size, process_count)
    if source.tfds is not None:
        from vgg_jax import data_tfds

        elements = data_tfds.stream_elements(source.tfds, pos, slots, shuffle_key=None)
        name = lambda k: f"{source.name} record {pos[k]}"  # noqa: E731
    else:
        elements, name = _file_elements(source, pos, slots), lambda k: source.paths[pos[k]]  # noqa: E731
    stream = _decode(elements, len(pos), batch_size, image_size, resize, interpolation, None, threads)
    yield from _assemble(stream, steps, batch_size, image_size, source, slots, name, with_ids=True)


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch `epoch`: argsort of raw PCG64 output, stable across NumPy versions."""
    bits = np.random.PCG64(np.random.SeedSequence([seed, epoch])).random_raw(n)
    return np.argsort(bits, kind="stable")


def _mix(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1, np.uint64)[0] >> 1)


def _check_batching(source: Source, batch_size: int, process_index: int, process_count: int) -> None:
    if batch_size < 1:
        raise UserError(f"batch_size must be a positive integer. Received: batch_size={batch_size}")
    if not 0 <= process_index < process_count:
        raise UserError(
            f"process_index must be in [0, process_count). Received: process_index={process_index}, process_count={process_count}"
        )


def _positions(steps: int, batch_size: int, process_count: int, process_index: int) -> np.ndarray:
    """Global positions this process reads, in its local slot order: step s, block p, offsets 0..B-1."""
    s = np.arange(steps, dtype=np.int64)[:, None] * (batch_size * process_count)
    return (s + process_index * batch_size + np.arange(batch_size, dtype=np.int64)).reshape(-1)


def _local_slots(pos: np.ndarray, batch_size: int, process_count: int) -> np.ndarray:
    return pos // (batch_size * process_count) * batch_size + pos % batch_size


def _file_elements(source: Source, index: np.ndarray, slots: np.ndarray):
    if len(index) == 0:
        return None
    from vgg_jax.data_decode import file_elements

    return file_elements(
        slots, [source.paths[i] for i in index], source.labels[index], [source.ids[i] for i in index], index
    )


def _decode(
    elements,
    count: int,
    batch_size: int,
    image_size: int,
    resize: str,
    interpolation: str,
    key: int | None,
    threads: int | None,
):
    if count == 0:  # a resumed run at the end of its epoch, or an eval shard with only padding
        return iter(())
    from vgg_jax.data_decode import decoded_batches

    return decoded_batches(
        elements,
        batch_size,
        size=image_size,
        resize=resize,
        interpolation=interpolation,
        augment_key=key,
        threads=threads,
    )


def _assemble(
    stream,
    num_batches: int,
    batch_size: int,
    image_size: int,
    source: Source,
    slots: np.ndarray,
    name,
    *,
    with_ids: bool,
) -> Iterator[dict]:
    """Place decoded elements into static batches by slot; slots never filled (padding, failures) stay masked.

    `slots[k]` is the local slot of the k-th planned element; a planned slot left empty is a file
    that failed to decode, recorded in `source.failed` under `name(k)`.
    """
    B = batch_size
    planned = np.full(num_batches * B, -1, np.int64)
    planned[slots] = np.arange(len(slots))
    chunk, pos = None, 0
    for k in range(num_batches):
        lo, hi = k * B, (k + 1) * B
        if chunk is None:
            chunk, pos = next(stream, None), 0
        if (
            chunk is not None
            and pos == 0
            and len(chunk["slot"]) == B
            and chunk["slot"][0] == lo
            and chunk["slot"][-1] == hi - 1
        ):
            out = {
                "image": chunk["image"],
                "label": chunk["label"],
                "mask": np.ones(B, bool),
            }  # the common case: no copy
            if with_ids:
                out["id"] = np.array([i.decode("utf-8", "replace") for i in chunk["id"]])
            chunk = None
            yield out
            continue
        out = {
            "image": np.zeros((B, image_size, image_size, 3), np.uint8),
            "label": np.zeros(B, np.int32),
            "mask": np.zeros(B, bool),
        }
        ids = np.full(B, "", object)
        while chunk is not None:
            n = int(np.searchsorted(chunk["slot"][pos:], hi))
            sel, local = slice(pos, pos + n), chunk["slot"][pos : pos + n] - lo
            out["image"][local], out["label"][local], out["mask"][local] = (
                chunk["image"][sel],
                chunk["label"][sel],
                True,
            )
            ids[local] = [i.decode("utf-8", "replace") for i in chunk["id"][sel]]
            pos += n
            if pos < len(chunk["slot"]):
                break
            chunk, pos = next(stream, None), 0
        for missing in planned[lo:hi][(planned[lo:hi] >= 0) & ~out["mask"]]:
            _report_failed(source, str(name(missing)))
        if with_ids:
            out["id"] = ids.astype(str)
        yield out


def _report_failed(source: Source, name: str) -> None:
    if source.tfds is not None:
        source.report_failed(name, "failed to decode")
    elif all(p != name for p, _ in source.failed):
        from vgg_jax.data_decode import decode_error

        source.report_failed(name, decode_error(name))
