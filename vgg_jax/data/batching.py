"""Plans and batches: which example fills each slot of each batch, then grain decodes them in threads or processes.

A pass is planned first as index arithmetic in numpy: local slot k of this process holds example
`plan[k]` (or PADDING). A batch's contents are so a pure function of (seed, epoch, step, process),
and a resumed run starts at `start_batch` without decoding what it skips: resume is exact by
construction, without iterator state. grain runs the plan: `MapDataset.source(plan).map(Loader)
.batch(B)`, read by threads (`threads`) in this process or in `workers` spawned processes, each
batch decoded whole by one of them and delivered in plan order, `prefetch` batches ahead.
Nothing here imports grain or jax until a batch is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgg_jax.data.decode import PADDING, Loader, decode_error, default_threads
from vgg_jax.data.source import Source
from vgg_jax.errors import UserError

# workers=None (the trainer's choice) starts worker processes only for a pass of WORKER_MIN_IMAGES or more on
# WORKER_MIN_CORES or more: a worker costs 1.5-3 s to start (spawn, and grain imports jax), and on 2 shared cores
# in-process threads decoded faster than 2 workers (benchmarks/DATA_RESULTS.md).
WORKER_MIN_IMAGES = 4096
WORKER_MIN_CORES = 4
PREFETCH = 4  # batches decoded ahead of the consumer, per process


def steps_per_epoch(source: Source, batch_size: int, process_count: int = 1) -> int:
    """Training steps in one epoch: the remainder (< batch_size * process_count examples) is dropped.

    Each epoch draws a new permutation, so a dropped example is seen in other epochs.
    """
    return source.num_examples // (batch_size * process_count)


def eval_steps(source: Source, batch_size: int, process_count: int = 1) -> int:
    """Evaluation batches per process: every example once, the last global batch padded."""
    return -(-source.num_examples // (batch_size * process_count))


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch `epoch`: argsort of raw PCG64 output, stable across NumPy versions."""
    bits = np.random.PCG64(np.random.SeedSequence([seed, epoch])).random_raw(n)
    return np.argsort(bits, kind="stable")


@dataclass(frozen=True)
class Pipeline:
    """How a pass decodes and splits its examples, the keyword options `train_batches` and `eval_batches` share.

    Images are decoded and resized by vgg_jax.data.resize (`resize` mode, `interpolation`) to `image_size`, as
    `load_image` does. Process `process_index` of `process_count` gets its own block of every global batch.
    `threads` decode in this process (default: its cores); `workers` > 0 decode in that many spawned processes
    instead, each batch whole in one of them (so a script asking for them needs `if __name__ == "__main__":`);
    None: one per core for a pass of WORKER_MIN_IMAGES or more on WORKER_MIN_CORES or more, else none (the trainer's).
    """

    image_size: int = 224
    resize: str = "squash"
    interpolation: str = "nearest"
    process_index: int = 0
    process_count: int = 1
    threads: int | None = None
    workers: int | None = 0


def train_batches(
    source: Source, batch_size: int, *, seed: int = 0, epoch: int = 0, augment: bool = False, start_batch: int = 0,
    **options: Any,
) -> Iterator[dict]:  # fmt: skip
    """One epoch of shuffled training batches for this process: {"image", "label", "mask"}, static shapes.

    Global step s takes positions [s*B*P, (s+1)*B*P) of a permutation drawn from (seed, epoch);
    process p gets the p-th block of B, so processes read disjoint shards. `mask` is all True
    unless a file failed to decode (then its slot is zeroed and masked: weight the loss by mask).
    `options`: the fields of `Pipeline` (image size, resize, interpolation, process, threads, workers).
    """
    opt = Pipeline(**options)
    _check_batching(source, batch_size, opt.process_index, opt.process_count)
    if not source.labelled:
        raise UserError(
            f"{source.name}: unlabelled images cannot be trained on; point the data at a folder with class subfolders"
        )
    steps = steps_per_epoch(source, batch_size, opt.process_count)
    if steps == 0:
        raise UserError(
            f"{source.name}: {source.num_examples} examples are fewer than one global batch of "
            f"{batch_size * opt.process_count}"
        )
    if not 0 <= start_batch <= steps:
        raise UserError(f"start_batch must be in [0, {steps}] (steps per epoch). Received: start_batch={start_batch}")
    pos = _positions(steps, batch_size, opt.process_count, opt.process_index)[start_batch * batch_size :]
    loader = _loader(source, opt, _mix(seed, epoch) if augment else None)
    if _streamed(source):  # the records at these positions of a seeded shuffle of the stream
        batches = source.tfds.stream_batches(
            pos, _mix(seed, epoch), loader, batch_size, opt.threads or default_threads()
        )
        name = lambda i: f"{source.name} record at shuffled position {i}"
        yield from _finish(batches, pos, batch_size, source, name, with_ids=False)
        return
    plan = permutation(source.num_examples, seed, epoch)[pos]
    batches = _grain_batches(loader, plan, batch_size, opt.threads, opt.workers)
    yield from _finish(batches, plan, batch_size, source, _namer(source), with_ids=False)


def eval_batches(source: Source, batch_size: int, **options: Any) -> Iterator[dict]:
    """Every example exactly once, in order: {"image", "label", "mask", "id"}; padding slots are masked.

    All processes yield `eval_steps(...)` batches of exactly `batch_size`, so nothing recompiles and
    multi-host collectives stay in step. Padding has image 0, label 0, id "".
    `options`: the fields of `Pipeline`, as in `train_batches`.
    """
    opt = Pipeline(**options)
    _check_batching(source, batch_size, opt.process_index, opt.process_count)
    steps = eval_steps(source, batch_size, opt.process_count)
    pos = _positions(steps, batch_size, opt.process_count, opt.process_index)
    plan = np.where(pos < source.num_examples, pos, PADDING)  # example g sits at global position g: source order
    loader = _loader(source, opt, None)
    if _streamed(source):
        batches = source.tfds.stream_batches(plan, None, loader, batch_size, opt.threads or default_threads())
    else:
        batches = _grain_batches(loader, plan, batch_size, opt.threads, opt.workers)
    yield from _finish(batches, plan, batch_size, source, _namer(source), with_ids=True)


def _streamed(source: Source) -> bool:
    return source.tfds is not None and not source.tfds.random_access


def _loader(source: Source, opt: Pipeline, augment_key: int | None) -> Loader:
    """The Loader of `source` at these options, checked: a bad option is a UserError before anything is read."""
    from vgg_jax.data.resize import check_options

    check_options(opt.resize, opt.interpolation)
    if source.tfds is None:
        items, labels = source.paths, source.labels
    else:  # streamed records carry their own bytes and labels
        items, labels = source.tfds.records() if source.tfds.random_access else ((), ())
    return Loader(items, labels, opt.image_size, opt.resize, opt.interpolation, augment_key)


def _namer(source: Source):
    """Example index -> the name `source.failed` lists it under."""
    if source.tfds is not None:
        return lambda i: f"{source.name} record {i}"
    return lambda i: source.paths[i]


def _grain_batches(loader: Loader, plan: np.ndarray, batch_size: int, threads: int | None, workers: int | None):
    """The decoded batches of `plan` (whole batches), in order, by grain."""
    if len(plan) == 0:  # a resumed run at the end of its epoch
        return
    import grain

    if workers is None:
        cores = default_threads()
        workers = cores if len(plan) >= WORKER_MIN_IMAGES and cores >= WORKER_MIN_CORES else 0
    if workers < 0:
        raise UserError(f"workers must be 0 or more. Received: workers={workers}")
    threads = threads or (1 if workers else default_threads())
    ds = grain.MapDataset.source(plan).map(loader).batch(batch_size)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=PREFETCH))
    if workers:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=PREFETCH))
    it = iter(ds)
    try:
        yield from it
    finally:
        if hasattr(it, "close"):  # worker processes and shared memory go now, not at garbage collection
            it.close()


def _absl_flags_parsed() -> None:
    """grain <= 0.2.18 reads an absl flag when it starts workers, which raises unless flags were parsed (outside an
    absl app they are not): google/grain#1355, fixed upstream by using the default. Mark them parsed, at defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _finish(batches, plan: np.ndarray, batch_size: int, source: Source, name, *, with_ids: bool) -> Iterator[dict]:
    """Name the examples that failed (masked slots of planned examples) in `source.failed`; add eval ids."""
    for k, batch in enumerate(batches):
        planned = plan[k * batch_size : (k + 1) * batch_size]
        mask = np.asarray(batch["mask"], bool)
        for i in planned[(planned != PADDING) & ~mask]:
            _report_failed(source, name(int(i)))
        out = {"image": _own(batch["image"]), "label": _own(batch["label"]), "mask": mask}
        if with_ids:
            ids = source.ids
            out["id"] = np.array([ids[i] if m else "" for i, m in zip(planned, mask)], dtype=str)
        yield out


def _own(array: np.ndarray) -> np.ndarray:
    """A plain array: a worker's batch arrives in shared memory, which is freed as soon as its copy is made."""
    return array if type(array) is np.ndarray else np.array(array)


def _report_failed(source: Source, name: str) -> None:
    if source.tfds is not None:
        source.report_failed(name, "failed to decode")
    elif all(p != name for p, _ in source.failed):  # the second decode, only once per file
        source.report_failed(name, decode_error(name))


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
