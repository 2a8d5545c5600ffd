"""`vgg-jax evaluate` and `vgg-jax predict`: restore a run's best checkpoint and score or predict images."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vgg_jax import parallel, rundir
from vgg_jax.checkpoint import Checkpoints
from vgg_jax.classifier import image_apply_fn
from vgg_jax.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_path
from vgg_jax.freeze import split
from vgg_jax.network import Weights, build_model, init_params, resolve_weights
from vgg_jax.paths import cache_dir, file_digest
from vgg_jax.rundir import say
from vgg_jax.step import eval_step
from vgg_jax.train import evaluate_batches


def load_run(run_dir: str | Path, weights: str | None = None, which: str | int = "best"):
    """(config, class names, eval function, trainable, frozen) from a run folder's "best" or "latest" checkpoint, or a step."""
    info = rundir.read_run(run_dir)
    try:
        cfg = TrainConfig.from_json(info["config"])
        cfg.validate()
    except (TypeError, UserError) as e:
        raise UserError(f"{Path(run_dir) / rundir.RUN_FILE}: damaged configuration ({e})") from None
    resolved = _run_weights(run_dir, info["weights"], weights)
    if resolved.sha256 != info["weights"]["sha256"]:
        raise UserError(
            f"{resolved.path}: not the weights file run {run_dir} was trained with (sha256 differs); pass --weights"
        )
    classes = info["classes"]
    probe = build_model(cfg, len(classes))
    trainable, frozen = split(init_params(probe, cfg, resolved), cfg.freeze_through)
    model = probe
    mesh = parallel.make_mesh()
    params_sh = parallel.shardings_for(trainable, mesh, cfg.shard_fc)
    checkpoints = Checkpoints(Path(run_dir) / "checkpoints", cfg.keep_checkpoints)
    try:  # the trained params alone: no optimizer is built, no optimizer state is read
        found = checkpoints.restore_good(parallel.put(trainable, params_sh), which, say=say, params_only=True)
    finally:
        checkpoints.close()
    if found is None:
        raise UserError(f"{run_dir}: no usable checkpoint yet; train first (or --resume the run)")
    step, params, _ = found
    frozen_sh = parallel.shardings_for(frozen, mesh, cfg.shard_fc)
    frozen = parallel.put(frozen, frozen_sh)
    say(f"{run_dir}: checkpoint step {step}; weights: {resolved.label}")
    eval_fn = parallel.jit_eval(partial(eval_step, apply_fn=image_apply_fn(model)), params_sh, frozen_sh, mesh)
    return cfg, classes, RunModel(eval_fn, mesh), params, frozen


def _run_weights(run_dir: str | Path, recorded: dict, weights: str | None) -> Weights:
    """`weights` if given, else the run's recorded weights file, else a cached params file with its sha256."""
    path, sha256 = recorded.get("path"), recorded.get("sha256")
    if weights is None and path and sha256 and not Path(path).is_file():
        found = _cached_by_sha256(sha256)
        if found is not None:
            say(f"{run_dir}: its weights file {path} is gone; using {found} from the cache (same sha256)")
            return resolve_weights(str(found))
    return resolve_weights(weights or path or "random")


def _cached_by_sha256(sha256: str) -> Path | None:
    """The params file in the cache (the ImageNet params, converted Keras files) whose bytes have this sha256."""
    root = cache_dir()
    for candidate in sorted(root.glob("*.safetensors")) + sorted((root / "converted").glob("*.safetensors")):
        try:
            if candidate.is_file() and file_digest(candidate) == sha256:
                return candidate
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class RunModel:
    """A restored run's jitted eval function and the mesh its arrays live on."""

    eval_fn: Any
    mesh: Any


def evaluate(
    run_dir: str | Path, data_spec: str | None = None, split_name: str = "valid", batch_size: int | None = None
) -> dict:
    """Accuracy, log loss and confusion matrix on a labelled split; prints them and returns them."""
    from vgg_jax import data

    cfg, classes, run_model, trainable, frozen = load_run(run_dir)
    source = data.open_source(data_spec or cfg.data, split_name, valid_fraction=cfg.valid_fraction, seed=cfg.seed,
                              labels_from_filename=cfg.labels_from_filename,
                              valid_fraction_default=data.DEFAULT_VALID_FRACTION)  # as train() opened it  # fmt: skip
    if source.class_names != classes:
        raise UserError(f"{data_spec or cfg.data}: classes {source.class_names} differ from the run's {classes}")
    say(f"{split_name}: {source.describe()}")
    bs = batch_size or cfg.eval_batch_size or cfg.batch_size
    parallel.check_batch_size(bs, run_model.mesh)
    result = evaluate_batches(run_model.eval_fn, trainable, frozen, _batches(data, source, cfg, bs), run_model.mesh)
    labels = result["labels"].astype(np.int64)
    predicted = result["probs"].argmax(-1)
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    result["confusion"] = confusion
    width = max(8, *(len(c) for c in classes))
    say(f"accuracy {result['accuracy']:.4f}   log loss {result['loss']:.4f}   ({result['count']} images)")
    say("confusion matrix (rows: true, columns: predicted)")
    say(" " * (width + 2) + "".join(f"{c:>{width}}" for c in classes))
    for name, row in zip(classes, confusion):
        say(f"  {name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return result


def predict(
    run_dir: str | Path,
    target: str,
    csv_path: str | None = None,
    clip: float | None = None,
    batch_size: int | None = None,
) -> Path:
    """Writes id,label (Kaggle Dogs vs Cats: label = P(class 1)) for every image in `target`, in id order."""
    from vgg_jax import data

    cfg, classes, run_model, trainable, frozen = load_run(run_dir)
    source = data.open_source(target, "test")
    say(f"predict: {source.describe()}")
    if clip is not None and not 0 <= clip < 0.5:
        raise UserError(f"--clip must be in [0, 0.5). Received: {clip}")
    bs = batch_size or cfg.eval_batch_size or cfg.batch_size
    parallel.check_batch_size(bs, run_model.mesh)
    result = evaluate_batches(
        run_model.eval_fn, trainable, frozen, _batches(data, source, cfg, bs, labelled=False), run_model.mesh
    )
    probs, ids = result["probs"], result["ids"]
    # Files that could not be decoded still get a row (a Kaggle submission needs every id): the uninformative prior.
    unreadable = source.unreadable_ids
    if unreadable:
        say(
            f"predict: {len(unreadable)} unreadable image(s) get probability {1 / len(classes):.2f}: {', '.join(unreadable[:5])}"
        )
        probs = np.concatenate([probs, np.full((len(unreadable), len(classes)), 1 / len(classes))])
        ids = ids + unreadable
    if clip:
        probs = np.clip(probs, clip, 1 - clip)
    out = Path(csv_path or Path(run_dir) / "predictions.csv")
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        if len(classes) == 2:
            writer.writerow(["id", "label"])
            writer.writerows([i, f"{p[1]:.6f}"] for i, p in zip(ids, probs))
        else:
            writer.writerow(["id", *classes])
            writer.writerows([i, *(f"{v:.6f}" for v in p)] for i, p in zip(ids, probs))
    say(
        f"wrote {out} ({len(ids)} rows; label = P({classes[1]})"
        + (f", clipped to [{clip}, {1 - clip}])" if clip else ")")
    )
    return out


def _batches(data, source, cfg: TrainConfig, batch_size: int, labelled: bool = True):
    for b in data.eval_batches(source, batch_size, image_size=cfg.image_size, resize=cfg.resize,
                               interpolation=cfg.interpolation, workers=None):  # fmt: skip
        label = b["label"] if labelled else np.zeros(len(b["mask"]), np.int32)
        yield {"inputs": b["image"], "label": label, "mask": b["mask"], "id": b["id"]}


def export(run_dir: str | Path, out: str | Path, which: str = "best") -> Path:
    """Writes the run's whole network (frozen + trained params, `head` included) as a params file, with the
    metadata `vgg_jax.load` and `VGG16(weights=...)` rebuild it from (classes, image size, resize, model)."""
    from vgg_jax import params_io
    from vgg_jax.freeze import merge
    from vgg_jax.predictor import export_metadata

    cfg, classes, _, trainable, frozen = load_run(run_dir, which=which)
    params = parallel.to_host(merge(trainable, frozen))
    metadata = export_metadata(cfg, classes, str(run_dir))
    if _random_backbone(run_dir):  # stays labelled RANDOM wherever the file goes
        metadata["weights"] = "random"
    params_io.save(out, params, metadata)
    say(f"wrote {out}")
    return Path(out)


def _random_backbone(run_dir: str | Path) -> bool:
    """Whether the run trained on a random backbone: no weights file, or one whose metadata says random."""
    recorded = rundir.read_run(run_dir)["weights"]
    if recorded["sha256"] is None:
        return True
    path = recorded.get("path")
    return bool(path and Path(path).is_file() and resolve_weights(path).random)
