"""`vgg-jax train`: the one module that wires data, network, step, sharding, checkpoints and metrics.

Every run is data parallel on a mesh over all devices of all processes (one device is a mesh of
one); each process feeds its own shard of the data, and only the first process writes files.
"""

from __future__ import annotations

import datetime
import hashlib
import platform
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np

import vgg_jax
from vgg_jax.train import features as feature_cache
from vgg_jax.train import parallel, rundir
from vgg_jax.train.checkpoint import Checkpoints, Position
from vgg_jax.models.classifier import Classifier, apply_fn, cut_shape
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.models.freeze import parse_lr_mults, split
from vgg_jax.models.weights import resolve_weights
from vgg_jax.train.network import build_model, init_params, param_bytes
from vgg_jax.train.optim import make_optimizer
from vgg_jax.train.rundir import say
from vgg_jax.train.step import create_state, eval_step, train_step


class Diverged(UserError):
    """The loss became NaN or inf; the run stopped and its last good checkpoint stays."""


@dataclass(frozen=True)
class Topology:
    """Devices and processes the run spans, and this process's share of every global batch."""

    mesh: Any
    process_index: int
    process_count: int

    @classmethod
    def current(cls) -> Topology:
        return cls(parallel.make_mesh(), jax.process_index(), jax.process_count())

    @property
    def lead(self) -> bool:
        return self.process_index == 0

    def local(self, global_batch: int, what: str) -> int:
        parallel.check_batch_size(global_batch, self.mesh, what)
        return global_batch // self.process_count


def open_sources(cfg: TrainConfig):
    from vgg_jax import data

    options = {"valid_fraction": cfg.valid_fraction, "seed": cfg.seed, "manual_dir": cfg.tfds_manual_dir,
               "labels_from_filename": cfg.labels_from_filename,
               "valid_fraction_default": data.DEFAULT_VALID_FRACTION}  # fmt: skip
    train_src = data.open_source(cfg.data, "train", **options)
    valid_src = data.open_source(cfg.data, "valid", **options)
    if train_src.class_names != valid_src.class_names:
        raise UserError(
            f"{cfg.data}: train classes {train_src.class_names} differ from valid classes {valid_src.class_names}"
        )
    return train_src, valid_src


def cache_cut(cfg: TrainConfig, topo: Topology) -> str | None:
    """The cut whose cached outputs feed the steps, or None to train through the whole network."""
    cut = feature_cache.cut_for(cfg.top, cfg.freeze_through, cfg.dropout)
    if cfg.cache_features:
        if cut is None or cfg.augment:
            raise UserError("--cache-features needs a frozen part (--freeze-through other than none) and no --augment")
        if topo.process_count > 1:
            raise UserError("--cache-features works in single-process runs only; drop it for multi-host training")
        return cut
    if cfg.cache_features is None and cut is not None and not cfg.augment and topo.process_count == 1:
        if cut in feature_cache.DEFAULT_CUTS:
            return cut
        say(f"feature cache: off by default at {cut} (large, and little compute saved); --cache-features turns it on")
    return None


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Trains per `cfg` into the run folder `cfg.out`; returns the final validation metrics.

    The inputs are checked before the run folder is touched; the folder is locked for the whole run, and a
    new run that fails before its first checkpoint leaves nothing behind."""
    from vgg_jax import data

    cfg.validate()
    topo = Topology.current()
    rundir.LEAD = topo.lead
    local_bs = topo.local(cfg.batch_size, "--batch-size")
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    local_eval_bs = topo.local(eval_bs, "--eval-batch-size")
    # Everything that can refuse the inputs runs before the run folder is touched.
    # Weights before any data is listed: offline with no cached file fails in one line, at once.
    weights = resolve_weights(cfg.weights, cfg.arch, cfg.top == "fc")
    parse_lr_mults(cfg.lr_mult, cfg.freeze_through)  # a factor for a frozen group is a mistake
    train_src, valid_src = open_sources(cfg)
    probe = build_model(cfg, len(train_src.class_names))
    params = init_params(probe, cfg, weights, train_src.class_names)
    trainable, frozen = split(params, cfg.freeze_through)
    del params
    steps_per_epoch = data.steps_per_epoch(train_src, local_bs, topo.process_count)
    if steps_per_epoch == 0:
        raise UserError(
            f"{cfg.data}: {train_src.num_examples} training images, fewer than one batch of {cfg.batch_size}"
        )

    folder = rundir.RunFolder(cfg, resume, overwrite) if topo.lead else None
    _sync("run folder ready", topo)
    try:
        return _train(cfg, topo, resume, train_src, valid_src, weights, probe, trainable, frozen, steps_per_epoch,
                      local_bs, local_eval_bs)  # fmt: skip
    except BaseException as e:
        if folder is not None and not isinstance(e, Diverged):  # a diverged run's metrics show what happened
            folder.abandon()
        raise
    finally:
        if folder is not None:
            folder.release()


def _train(cfg, topo, resume, train_src, valid_src, weights, probe, trainable, frozen, steps_per_epoch, local_bs,
           local_eval_bs) -> dict:  # fmt: skip
    from vgg_jax import data

    run_dir = Path(cfg.out)
    say(f"train: {train_src.describe()}")
    say(f"valid: {valid_src.describe()}")
    if (line := data.overlap_warning(train_src, valid_src)) is not None:
        say(line)
    say(f"weights: {weights.label}")
    devices = f"{topo.mesh.size} {jax.devices()[0].platform.upper()} device(s)"
    say(f"mesh: {devices} in {topo.process_count} process(es); global batch {cfg.batch_size}, {local_bs} per process")
    model = probe
    tx = make_optimizer(
        trainable, name=cfg.optimizer, lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, warmup_steps=cfg.warmup_steps,
        cosine=cfg.schedule == "cosine", momentum=cfg.momentum, clip_norm=cfg.clip_norm, lr_mults=parse_lr_mults(cfg.lr_mult),
    )  # fmt: skip
    state = create_state(trainable, tx, cfg.seed)
    state_sh = parallel.shardings_for(state, topo.mesh, cfg.shard_fc)
    state = parallel.put(state, state_sh)
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints, writer=True, lead=topo.lead)
    position = Position(0, 0)
    if resume:
        _check_same_inputs(run_dir, train_src, weights)
        if (found := checkpoints.restore_good(state, "latest", say=say)) is not None:
            latest, state, meta = found
            position = Position(meta["epoch"], meta["batch"])
            say(f"resuming from step {latest} (epoch {position.epoch + 1}, batch {position.batch})")
        else:
            say("no usable checkpoint yet; starting from step 0")
    cut = cache_cut(cfg, topo)
    if topo.lead:
        rundir.write_run(run_dir, _run_info(cfg, train_src, valid_src, weights, state, frozen, topo, cut))
    say(
        f"trainable: {', '.join(sorted(trainable))} ({param_bytes(trainable) // 4:,} params); frozen: {param_bytes(frozen) // 4:,} params"
    )
    metrics = rundir.Metrics(run_dir, resume_step=int(state.step) if resume else None, say=say) if topo.lead else None

    frozen = parallel.put(frozen, parallel.shardings_for(frozen, topo.mesh, cfg.shard_fc))
    if cut is not None:
        inputs = _cached_features(cfg, model, frozen, weights, train_src, valid_src, local_eval_bs, cut)
        epoch_batches = partial(_feature_batches, inputs["train"], train_src, cfg)
        valid_batches = partial(_feature_eval_batches, inputs["valid"], local_eval_bs)
        frozen = above(model, frozen, cut)  # the step only runs what lies above the cut
    else:
        epoch_batches = partial(_image_batches, train_src, cfg, local_bs, topo)
        valid_batches = partial(_image_eval_batches, valid_src, cfg, local_eval_bs, topo)
    apply = apply_fn(model, cut or "input")
    frozen_sh = parallel.shardings_for(frozen, topo.mesh, cfg.shard_fc)
    step_fn = parallel.jit_step(partial(train_step, apply_fn=apply, tx=tx), state_sh, frozen_sh, topo.mesh)
    eval_fn = parallel.jit_eval(partial(eval_step, apply_fn=apply), state_sh.params, frozen_sh, topo.mesh)

    result = {}
    try:
        for epoch in range(position.epoch, cfg.epochs):
            start = position.batch if epoch == position.epoch else 0
            batches = parallel.prefetch(epoch_batches(epoch, start), topo.mesh)
            state = _run_epoch(
                cfg, topo, state, step_fn, frozen, batches, epoch, start, steps_per_epoch, checkpoints, metrics
            )
            result = evaluate_batches(eval_fn, state.params, frozen, valid_batches(), topo.mesh, keep_probs=False)
            if not np.isfinite(result["loss"]):
                raise _diverged(cfg, "validation loss", int(state.step), epoch, checkpoints)
            say(
                f"epoch {epoch + 1}/{cfg.epochs}: valid loss {result['loss']:.4f}, accuracy {result['accuracy']:.2%} ({result['count']} images)"
            )
            # Logged before the checkpoint: a kill in between re-runs the epoch end, whose row a resume drops.
            if metrics is not None:
                metrics.log(kind="valid", step=int(state.step), epoch=epoch + 1, loss=result["loss"], accuracy=result["accuracy"])
                metrics.plot(run_dir / "curves.png")
            checkpoints.save(int(state.step), state, Position(epoch + 1, 0), val_loss=result["loss"])
    finally:
        checkpoints.close()
    if metrics is not None:
        rundir.write_run(run_dir, _finished(rundir.read_run(run_dir), metrics.rows))
    if topo.process_count > 1:
        digest = hashlib.sha256(
            b"".join(np.ascontiguousarray(x).tobytes() for x in jax.tree.leaves(parallel.to_host(state.params)))
        )
        print(
            f"process {topo.process_index}/{topo.process_count}: final trainable params sha256 {digest.hexdigest()}",
            flush=True,
        )
    say(f"run folder: {run_dir} (run.json, metrics.jsonl, curves.png, checkpoints/)")
    return result


def _run_epoch(cfg, topo, state, step_fn, frozen, batches, epoch, start, steps_per_epoch, checkpoints, metrics):
    from tqdm import tqdm

    bar = tqdm(total=steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               dynamic_ncols=True, mininterval=1.0, disable=not topo.lead)  # fmt: skip
    window_start, window_images, window = time.perf_counter(), 0, []
    step = int(state.step)  # counted on the host: reading state.step would wait for every step
    for index, batch in enumerate(batches, start):
        state, m = step_fn(state, frozen, batch)
        step += 1
        window.append(m)
        window_images += cfg.batch_size
        bar.update(1)
        # The epoch's last step is checkpointed after validation, with its val loss.
        at_checkpoint = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and index + 1 < steps_per_epoch
        if len(window) >= cfg.log_every or at_checkpoint or index + 1 == steps_per_epoch:
            stats = jax.device_get(window)
            if not all(bool(s["finite"]) for s in stats):
                bar.close()
                raise _diverged(cfg, "training loss", step, epoch, checkpoints)
            rate = window_images / max(time.perf_counter() - window_start, 1e-9)
            loss, accuracy = float(np.mean([s["loss"] for s in stats])), float(np.mean([s["accuracy"] for s in stats]))
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            if metrics is not None:
                metrics.log(kind="train", step=step, epoch=epoch + 1, loss=loss, accuracy=accuracy, images_per_s=rate)
            window_start, window_images, window = time.perf_counter(), 0, []
        if at_checkpoint:
            checkpoints.save(step, state, Position(epoch, index + 1))
    bar.close()
    return state


def _diverged(cfg: TrainConfig, what: str, step: int, epoch: int, checkpoints: Checkpoints) -> Diverged:
    last = checkpoints.latest_step()
    return Diverged(
        f"{cfg.out}: {what} or parameters became NaN/inf near step {step} (epoch {epoch + 1}); stopped. "
        f"Last good checkpoint: {'none' if last is None else f'step {last}'}; try a lower --lr or --clip-norm"
    )


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


def _run_info(cfg, train_src, valid_src, weights, state, frozen, topo, cut: str | None) -> dict:
    return {
        "config": cfg.to_json(),
        "classes": train_src.class_names,
        "data": {"train": train_src.fingerprint, "valid": valid_src.fingerprint, "train_examples": train_src.num_examples,
                 "valid_examples": valid_src.num_examples, "skipped": len(train_src.skipped) + len(valid_src.skipped)},
        "weights": {"path": weights.path, "sha256": weights.sha256},
        "input": {"resize": cfg.resize, "interpolation": cfg.interpolation, "image_size": cfg.image_size},
        "dropout": {"rate": cfg.dropout, "after": _dropout_layers(cfg.top), "in_training_even_if_frozen": True},
        "feature_cache": {"cut": cut, "dtype": cfg.cache_dtype},
        "params": {"trainable": param_bytes(state.params) // 4, "frozen": param_bytes(frozen) // 4,
                   "optimizer_state_bytes": param_bytes(state.opt_state)},
        "topology": {"devices": topo.mesh.size, "processes": topo.process_count, "platform": jax.devices()[0].platform},
        "versions": _versions(),
        "command": list(sys.argv),
        "started": _utc_now(),
    }  # fmt: skip


def _versions() -> dict:
    """Versions of Python and of the packages a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    found = {name: of(dist) for name, dist in
             (("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"), ("orbax", "orbax-checkpoint"))}
    return {"vgg_jax": vgg_jax.__version__, "jax": jax.__version__, **found, "python": platform.python_version()}


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _finished(info: dict, rows: list[dict]) -> dict:
    """run.json at the end of training: the end time and the best validation row (lowest loss, as "best" keeps)."""
    valid = [r for r in rows if r.get("kind") == "valid" and r.get("loss") is not None]
    best = min(valid, key=lambda r: r["loss"], default=None)
    keep = ("loss", "accuracy", "step", "epoch")
    return {**info, "ended": _utc_now(), "best_valid": {k: best[k] for k in keep} if best else None}


def _image_batches(source, cfg: TrainConfig, local_bs: int, topo: Topology, epoch: int, start: int):
    from vgg_jax import data

    for b in data.train_batches(source, local_bs, image_size=cfg.image_size, resize=cfg.resize,
                                interpolation=cfg.interpolation, seed=cfg.seed, epoch=epoch,
                                augment=cfg.augment, process_index=topo.process_index, process_count=topo.process_count,
                                start_batch=start, workers=None):  # fmt: skip
        yield {"inputs": b["image"], "label": b["label"], "mask": b["mask"]}


def _image_eval_batches(source, cfg: TrainConfig, local_bs: int, topo: Topology):
    from vgg_jax import data

    for b in data.eval_batches(source, local_bs, image_size=cfg.image_size, resize=cfg.resize,
                               interpolation=cfg.interpolation, process_index=topo.process_index, process_count=topo.process_count,
                               workers=None):  # fmt: skip
        yield {"inputs": b["image"], "label": b["label"], "mask": b["mask"], "id": b["id"]}


def _dropout_layers(top: str) -> list[str]:
    from vgg_jax.models.classifier import mlp_units

    if top == "fc":
        return ["fc1", "fc2"]
    return [f"mlp{i}" for i in range(1, len(mlp_units(top) or ()) + 1)]


def above(model: Classifier, frozen: dict, cut: str) -> dict:
    """The frozen layers that run above `cut` (fc2 for the recipe's fc1 cut; none for a blockN_pool cut)."""
    stages = model.stages()
    return {k: v for k, v in frozen.items() if stages.index(model.stage_of(k)) > stages.index(cut)}


def _feature_batches(cached: feature_cache.Features, source, cfg: TrainConfig, epoch: int, start: int):
    """The same examples in the same order as the image pipeline gives (data.permutation), from the cache."""
    from vgg_jax import data

    steps = data.steps_per_epoch(source, cfg.batch_size)
    order = data.permutation(source.num_examples, cfg.seed, epoch)[: steps * cfg.batch_size]
    for i in range(start, steps):
        yield feature_cache.gather(cached, order[i * cfg.batch_size : (i + 1) * cfg.batch_size])


def _feature_eval_batches(cached: feature_cache.Features, batch_size: int):
    """Every cached example once, in order; the last batch padded with masked zeros."""
    count = len(cached.labels)
    for i in range(0, count, batch_size):
        batch = feature_cache.gather(cached, np.arange(i, min(i + batch_size, count)))
        pad = batch_size - len(batch["label"])
        yield {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) if pad else v for k, v in batch.items()}


def _cached_features(cfg, model: Classifier, frozen, weights, train_src, valid_src, batch_size: int, cut: str) -> dict:
    """The cut's outputs for train and valid: from the cache when their key matches, else computed once and stored."""
    from vgg_jax import data

    shape = cut_shape(model, cut, cfg.image_size)
    sources = {"train": train_src, "valid": valid_src}
    fields = {name: _cache_fields(cfg, weights, source, cut) for name, source in sources.items()}
    out, missing = {}, []
    for name, source in sources.items():
        cached = feature_cache.load(fields[name], name, source.num_examples, say=say)
        if cached is not None:
            say(f"feature cache: {name} {cut} features from {feature_cache.features_dir(fields[name])}")
            out[name] = cached
        else:
            missing.append(name)
    if not missing:
        return out
    needed = sum(feature_cache.nbytes(sources[s].num_examples, shape, cfg.cache_dtype) for s in missing)
    what = " + ".join(f"{s} {sources[s].num_examples:,}" for s in missing)
    per_image = feature_cache.nbytes(1, shape, cfg.cache_dtype)
    layout = "x".join(map(str, shape))
    say(feature_cache.check_space(feature_cache.features_dir(fields[missing[0]]).parent,
                                  needed, f"{cut} outputs of {layout} {cfg.cache_dtype} ({per_image:,} bytes per image) for {what} images"))  # fmt: skip
    below = _below_fn(model, cut, cfg.cache_dtype)
    for name in missing:
        source, t0 = sources[name], time.perf_counter()
        batches = data.eval_batches(source, batch_size, image_size=cfg.image_size, resize=cfg.resize,
                                    interpolation=cfg.interpolation, workers=None)  # fmt: skip
        out[name] = feature_cache.compute(fields[name], name, batches, lambda x: below(frozen, x),
                                          source.num_examples, shape, cfg.cache_dtype)  # fmt: skip
        seconds = time.perf_counter() - t0
        say(f"feature cache: {name} backbone pass over {source.num_examples} images in {seconds:.1f} s")
    return out


def _below_fn(model: Classifier, cut: str, cache_dtype: str):
    """Jitted: uint8 images -> the cut's output, in the cache's storage dtype."""
    import jax.numpy as jnp

    from vgg_jax.models.preprocess import preprocess_input

    store = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cache_dtype]
    return jax.jit(
        lambda p, x: model.apply({"params": p}, preprocess_input(x, model.dtype), stop=cut).astype(store),
        **parallel.jit_options(),
    )


def _cache_fields(cfg: TrainConfig, weights, source, cut: str) -> dict:
    """Everything the cut's outputs depend on; the data by the files' contents, not their names or times."""
    import flax

    if weights.sha256 is not None:
        weights_key = weights.sha256
    else:  # a random backbone is a pure function of the seed, the network and the library versions
        weights_key = f"random-init seed {cfg.seed} top {cfg.top} flax {flax.__version__} jax {jax.__version__}"
    data_key = source.fingerprint if source.tfds is not None else feature_cache.contents_digest(source.paths, say=say)
    return {
        "weights": weights_key, "data": data_key, "image_size": cfg.image_size, "resize": cfg.resize,
        "interpolation": cfg.interpolation, "preprocessing": feature_cache.PREPROCESSING, "arch": cfg.arch,
        "widths": cfg.widths, "fc_units": cfg.fc_units if cut in ("fc1", "fc2") else None, "cut": cut,
        "dtype": cfg.dtype, "cache_dtype": cfg.cache_dtype,
    }  # fmt: skip


def _check_same_inputs(run_dir: Path, train_src, weights) -> None:
    info = rundir.read_run(run_dir)
    if info["data"]["train"] != train_src.fingerprint:
        raise UserError(f"{run_dir}: --resume with different training data than the run started with")
    if info["weights"]["sha256"] != weights.sha256:
        raise UserError(f"{run_dir}: --resume with a different weights file than the run started with (sha256 differs)")


def _sync(name: str, topo: Topology) -> None:
    if topo.process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
