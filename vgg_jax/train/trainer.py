"""`vgg-jax train`, in the sections big_vision's main reads in: input, model (params, optimizer, state on the
mesh), run folder, checkpoint, feed, step, loop.

Every run is data parallel on a mesh over all devices of all processes (one device is a mesh of one); each
process feeds its own shard of the data, and only the first process writes files and talks.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vgg_jax import data, log
from vgg_jax.errors import UserError
from vgg_jax.log import say
from vgg_jax.models.freeze import parse_lr_mults
from vgg_jax.models.weights import Weights, resolve_weights
from vgg_jax.train import parallel, record, rundir
from vgg_jax.train.checkpoint import Checkpoints, Position
from vgg_jax.train.config import TrainConfig
from vgg_jax.train.feed import Feed, cache_cut, cached_feed, image_feed, open_sources
from vgg_jax.train.network import param_bytes
from vgg_jax.train.parallel import Topology
from vgg_jax.train.setup import Run, build_run, optimizer_for


class Diverged(UserError):
    """The loss or the parameters became NaN or inf; the run stopped and its last good checkpoint stays."""


@dataclass(frozen=True)
class Inputs:
    """The data side of a run: both splits, this process's batch sizes and the steps in an epoch."""

    train: data.Source
    valid: data.Source
    local_bs: int
    local_eval_bs: int
    steps_per_epoch: int


@dataclass(frozen=True)
class Loop:
    """What every epoch uses: the run, its jitted steps, where progress is written, and the epoch's length."""

    cfg: TrainConfig
    topo: Topology
    run: Run
    step_fn: Any
    eval_fn: Any
    checkpoints: Checkpoints
    metrics: rundir.Metrics | None
    steps_per_epoch: int


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Trains per `cfg` into the run folder `cfg.out`; returns the final validation metrics.

    The inputs are checked and the network is built before the run folder is touched; the folder is locked
    for the whole run, and a new run that fails before its first checkpoint leaves nothing behind."""
    cfg.validate()
    topo = Topology.current()
    log.set_process_index(topo.process_index)
    # Weights before any data is listed: offline with no cached file fails in one line, at once.
    weights = resolve_weights(cfg.weights, cfg.arch, cfg.top == "fc")
    parse_lr_mults(cfg.lr_mult, cfg.freeze_through)  # a factor for a frozen group is a mistake

    # ---- input
    inputs = _input(cfg, topo)
    # ---- model: params from the weights file, split, optimizer and state, on the mesh
    classes = inputs.train.class_names
    run = build_run(cfg, topo.mesh, len(classes), weights, class_names=classes,
                    optimizer=optimizer_for(cfg, cfg.epochs * inputs.steps_per_epoch))  # fmt: skip
    # ---- run folder
    folder = rundir.RunFolder(cfg, resume, overwrite) if topo.lead else None
    topo.sync("run folder ready")
    try:
        return _train(cfg, topo, resume, inputs, weights, run)
    except BaseException as e:
        if folder is not None and not isinstance(e, Diverged):  # a diverged run's metrics show what happened
            folder.abandon()
        raise
    finally:
        if folder is not None:
            folder.release()


def _input(cfg: TrainConfig, topo: Topology) -> Inputs:
    """Both splits opened and checked, and the batch sizes split over the processes."""
    local_bs = topo.local(cfg.batch_size, "`batch_size`")
    local_eval_bs = topo.local(cfg.eval_batch_size or cfg.batch_size, "`eval_batch_size`")
    train_src, valid_src = open_sources(cfg)
    steps = data.steps_per_epoch(train_src, local_bs, topo.process_count)
    if steps == 0:
        raise UserError(
            f"{cfg.data}: {train_src.num_examples} training images, fewer than one batch of {cfg.batch_size}"
        )
    return Inputs(train_src, valid_src, local_bs, local_eval_bs, steps)


def _train(cfg: TrainConfig, topo: Topology, resume: bool, inputs: Inputs, weights: Weights, run: Run) -> dict:
    run_dir = Path(cfg.out)
    _describe(cfg, topo, inputs, weights)
    # ---- checkpoint
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints, writer=True, lead=topo.lead)
    position = _resume(run_dir, checkpoints, run, inputs, weights) if resume else Position(0, 0)
    cut = cache_cut(cfg, topo)
    if topo.lead:
        rundir.write_run(run_dir, record.started(cfg, inputs.train, inputs.valid, weights, run.state, run.frozen,
                                                 topo, cut))  # fmt: skip
    trainable, frozen = param_bytes(run.state.params) // 4, param_bytes(run.frozen) // 4
    say(f"trainable: {', '.join(sorted(run.state.params))} ({trainable:,} params); frozen: {frozen:,} params")
    metrics = (
        rundir.Metrics(run_dir, resume_step=int(run.state.step) if resume else None, say=say) if topo.lead else None
    )
    # ---- feed: the images, or a cut's outputs from the feature cache
    if cut is not None:
        feed = cached_feed(cfg, run, weights, inputs.train, inputs.valid, inputs.local_eval_bs, cut)
    else:
        feed = image_feed(cfg, topo, inputs.train, inputs.valid, inputs.local_bs, inputs.local_eval_bs)
    # ---- step
    loop = Loop(cfg, topo, run, run.step_fn(feed.start), run.eval_fn(feed.start), checkpoints, metrics,
                inputs.steps_per_epoch)  # fmt: skip
    # ---- loop
    try:
        result = _fit(loop, feed, position)
    finally:
        checkpoints.close()
    _finish(loop)
    return result


def _describe(cfg: TrainConfig, topo: Topology, inputs: Inputs, weights: Weights) -> None:
    """The run's opening lines: the data, the weights and the devices."""
    say(f"train: {inputs.train.describe()}")
    say(f"valid: {inputs.valid.describe()}")
    if (line := data.overlap_warning(inputs.train, inputs.valid)) is not None:
        say(line)
    say(f"weights: {weights.label}")
    devices = f"{topo.mesh.size} {jax.devices()[0].platform.upper()} device(s)"
    say(f"mesh: {devices} in {topo.process_count} process(es); global batch {cfg.batch_size}, "
        f"{inputs.local_bs} per process")  # fmt: skip


def _resume(run_dir: Path, checkpoints: Checkpoints, run: Run, inputs: Inputs, weights: Weights) -> Position:
    """Restores the latest good checkpoint into `run.state`; the position in the epochs to go on from."""
    _check_same_inputs(run_dir, inputs.train, weights)
    found = checkpoints.restore_good(run.state, "latest", say=say)
    if found is None:
        say("no usable checkpoint yet; starting from step 0")
        return Position(0, 0)
    latest, run.state, meta = found
    position = Position(meta["epoch"], meta["batch"])
    say(f"resuming from step {latest} (epoch {position.epoch + 1}, batch {position.batch})")
    return position


def _check_same_inputs(run_dir: Path, train_src, weights: Weights) -> None:
    info = rundir.read_run(run_dir)
    if info["data"]["train"] != train_src.fingerprint:
        raise UserError(f"{run_dir}: `resume` with different training data than the run started with")
    if info["weights"]["sha256"] != weights.sha256:
        raise UserError(f"{run_dir}: `resume` with a different weights file than the run started with (sha256 differs)")


def _fit(loop: Loop, feed: Feed, position: Position) -> dict:
    """The epochs from `position` on, each validated, then checkpointed if its validation loss is finite."""
    cfg, state, result = loop.cfg, loop.run.state, {}
    for epoch in range(position.epoch, cfg.epochs):
        start = position.batch if epoch == position.epoch else 0
        batches = parallel.prefetch(feed.epoch(epoch, start), loop.topo.mesh)
        state = _run_epoch(loop, state, batches, epoch, start)
        result = evaluate_batches(loop.eval_fn, state.params, loop.run.frozen, feed.valid(), loop.topo.mesh,
                                  keep_probs=False)  # fmt: skip
        if not np.isfinite(result["loss"]):
            raise _diverged(cfg, "validation loss", int(state.step), epoch, loop.checkpoints)
        say(f"epoch {epoch + 1}/{cfg.epochs}: valid loss {result['loss']:.4f}, accuracy {result['accuracy']:.2%} "
            f"({result['count']} images)")  # fmt: skip
        # Logged before the checkpoint: a kill in between re-runs the epoch end, whose row a resume drops.
        if loop.metrics is not None:
            loop.metrics.log(kind="valid", step=int(state.step), epoch=epoch + 1, loss=result["loss"],
                             accuracy=result["accuracy"])  # fmt: skip
            loop.metrics.plot(Path(cfg.out) / "curves.png")
        loop.checkpoints.save(int(state.step), state, Position(epoch + 1, 0), val_loss=result["loss"])
    loop.run.state = state
    return result


def _run_epoch(loop: Loop, state, batches, epoch: int, start: int):
    """One epoch's steps from batch `start`: progress bar, metrics every log_every steps, mid-epoch checkpoints;
    Diverged as soon as a logged window holds a non-finite loss or update."""
    from tqdm import tqdm

    cfg = loop.cfg
    bar = tqdm(total=loop.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               dynamic_ncols=True, mininterval=1.0, disable=not loop.topo.lead)  # fmt: skip
    window_start, window_images, window = time.perf_counter(), 0, []
    step = int(state.step)  # counted on the host: reading state.step would wait for every step
    for index, batch in enumerate(batches, start):
        state, m = loop.step_fn(state, loop.run.frozen, batch)
        step += 1
        window.append(m)
        window_images += cfg.batch_size
        bar.update(1)
        # The epoch's last step is checkpointed after validation, with its val loss.
        at_checkpoint = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and index + 1 < loop.steps_per_epoch
        if len(window) >= cfg.log_every or at_checkpoint or index + 1 == loop.steps_per_epoch:
            stats = jax.device_get(window)
            if not all(bool(s["finite"]) for s in stats):
                bar.close()
                raise _diverged(cfg, "training loss", step, epoch, loop.checkpoints)
            rate = window_images / max(time.perf_counter() - window_start, 1e-9)
            loss, accuracy = float(np.mean([s["loss"] for s in stats])), float(np.mean([s["accuracy"] for s in stats]))
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            if loop.metrics is not None:
                loop.metrics.log(kind="train", step=step, epoch=epoch + 1, loss=loss, accuracy=accuracy,
                                 images_per_s=rate)  # fmt: skip
            window_start, window_images, window = time.perf_counter(), 0, []
        if at_checkpoint:
            loop.checkpoints.save(step, state, Position(epoch, index + 1))
    bar.close()
    return state


def _diverged(cfg: TrainConfig, what: str, step: int, epoch: int, checkpoints: Checkpoints) -> Diverged:
    last = checkpoints.latest_step()
    return Diverged(
        f"{cfg.out}: {what} or parameters became NaN/inf near step {step} (epoch {epoch + 1}); stopped. "
        f"Last good checkpoint: {'none' if last is None else f'step {last}'}; try a lower `lr` or `clip_norm`"
    )


def _finish(loop: Loop) -> None:
    """run.json's end (the best validation row); in a multi-host job, every process prints its params' digest."""
    run_dir = Path(loop.cfg.out)
    if loop.metrics is not None:
        rundir.write_run(run_dir, record.finished(rundir.read_run(run_dir), loop.metrics.rows))
    if loop.topo.process_count > 1:  # every process, on purpose: equal digests show the replicas agree
        leaves = jax.tree.leaves(parallel.to_host(loop.run.state.params))
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in leaves)).hexdigest()
        print(f"process {loop.topo.process_index}/{loop.topo.process_count}: final trainable params sha256 {digest}",
              flush=True)  # fmt: skip
    say(f"run folder: {run_dir} (run.json, metrics.jsonl, curves.png, checkpoints/)")


def evaluate_batches(eval_fn, trainable, frozen, batches, mesh, keep_probs: bool = True) -> dict:
    """Accuracy and log loss over every real (unmasked) example exactly once, plus, with keep_probs,
    this process's per-example probabilities, labels and ids."""
    loss_sum = correct = count = 0.0
    probs, labels, ids = [], [], []
    for batch in parallel.prefetch(batches, mesh):
        host_ids = batch.pop("id", None)  # strings stay on the host
        out = eval_fn(trainable, frozen, batch)
        sums = jax.device_get({k: out[k] for k in ("loss_sum", "correct", "count")})
        loss_sum, correct, count = (
            loss_sum + float(sums["loss_sum"]),
            correct + float(sums["correct"]),
            count + float(sums["count"]),
        )
        if keep_probs:
            real = parallel.local_rows(batch["mask"]).astype(bool)
            probs.append(parallel.local_rows(out["probs"])[real])
            labels.append(parallel.local_rows(batch["label"])[real])
            if host_ids is not None:
                ids.extend(np.asarray(host_ids)[real].tolist())
    n = max(count, 1.0)
    return {
        "loss": loss_sum / n, "accuracy": correct / n, "count": int(count),
        "probs": np.concatenate(probs) if probs else np.zeros((0, 2)),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int32), "ids": ids,
    }  # fmt: skip
