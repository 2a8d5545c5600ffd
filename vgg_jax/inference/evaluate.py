"""`vgg-jax evaluate` and `vgg-jax predict`: restore a run's best checkpoint and score or predict images."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vgg_jax.data.source import printable
from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_path, check_writable
from vgg_jax.log import say
from vgg_jax.models.weights import Weights, resolve_weights
from vgg_jax.paths import cache_dir, file_digest
from vgg_jax.train import parallel, rundir
from vgg_jax.train.checkpoint import Checkpoints
from vgg_jax.train.config import TrainConfig
from vgg_jax.train.setup import build_run
from vgg_jax.train.trainer import evaluate_batches


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
            f"{resolved.path}: not the weights file run {run_dir} was trained with (sha256 differs); pass `weights`"
        )
    classes = info["classes"]
    run = build_run(cfg, parallel.make_mesh(), len(classes), resolved)  # inference: no optimizer is built
    checkpoints = Checkpoints(Path(run_dir) / "checkpoints", cfg.keep_checkpoints)
    try:  # the trained params alone: no optimizer state is read
        found = checkpoints.restore_good(run.params, which, say=say, params_only=True)
    finally:
        checkpoints.close()
    if found is None:
        raise UserError(f"{run_dir}: no usable checkpoint yet; train first (or resume the run)")
    step, params, _ = found
    say(f"{run_dir}: checkpoint step {step}; weights: {resolved.label}")
    return cfg, classes, RunModel(run.eval_fn(), run.mesh, step, run.model), params, run.frozen


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
    """A restored run's jitted eval function, the mesh its arrays live on, the checkpoint step restored, and
    the flax Classifier."""

    eval_fn: Any
    mesh: Any
    step: int
    model: Any


def evaluate(
    run_dir: str | Path,
    data_spec: str | None = None,
    split_name: str = "valid",
    batch_size: int | None = None,
    report_dir: str | Path | None = None,
    top_losses: int = 16,
) -> dict:
    """Accuracy, log loss, confusion matrix, per-class metrics (and AUC for two classes) on a labelled split;
    prints them, writes the report folder (RUN/eval by default: vgg_jax.inference.report.FILES) and returns the report."""
    from vgg_jax import data
    from vgg_jax.inference import report

    if top_losses < 1:
        raise UserError(f"`top_losses` must be an integer >= 1. Received: {top_losses}")
    folder = Path(report_dir) if report_dir is not None else Path(run_dir) / "eval"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; give `report` a folder")
    check_writable(folder / "report.json", "report")  # before any checkpoint is loaded
    cfg, classes, run_model, trainable, frozen = load_run(run_dir)
    spec = data_spec or cfg.data
    source = data.open_source(spec, split_name, valid_fraction=cfg.valid_fraction, seed=cfg.seed,
                              labels_from_filename=cfg.labels_from_filename,
                              valid_fraction_default=data.DEFAULT_VALID_FRACTION)  # as train() opened it  # fmt: skip
    if source.class_names != classes:
        raise UserError(f"{spec}: classes {source.class_names} differ from the run's {classes}")
    say(f"{split_name}: {source.describe()}")
    bs = batch_size or cfg.eval_batch_size or cfg.batch_size
    parallel.check_batch_size(bs, run_model.mesh)
    result = evaluate_batches(run_model.eval_fn, trainable, frozen, _batches(data, source, cfg, bs), run_model.mesh)
    labels = result["labels"].astype(np.int64)
    paths = _row_paths(source, result["ids"])
    identity = _identity(run_dir, run_model.step, cfg, spec, split_name, source, result, paths)
    written = report.write(folder, identity, result["probs"], labels, paths, classes, top_losses,
                           partial(_tile, cfg.resize) if source.paths is not None else lambda _: None)  # fmt: skip
    result["confusion"] = np.asarray(written["confusion_matrix"]["counts"], np.int64)
    _print_report(written, classes)
    say(f"report: {folder} ({', '.join(report.FILES)})")
    result["report"] = written
    return result


def _row_paths(source, ids: list[str]) -> list[str]:
    """The file path of every scored row (folder sources), else its id (tfds record names)."""
    if source.paths is None:
        return list(ids)
    path_of = dict(zip(source.ids, source.paths))
    return [path_of[i] for i in ids]


def _identity(
    run_dir, step: int, cfg: TrainConfig, spec: str, split_name: str, source, result: dict, paths: list[str]
) -> dict:
    """report.json's head: what was scored, by which checkpoint of which run, and the two headline numbers."""
    from vgg_jax.train.features import contents_digest

    info = rundir.read_run(run_dir)
    if source.paths is not None:
        fingerprint, of = contents_digest(paths, say=say), "the scored files' contents, in row order"
    else:
        fingerprint, of = source.fingerprint, "the tfds split's listing"
    return {
        "run": str(Path(run_dir).absolute()),
        "checkpoint_step": step,
        "run_started": info.get("started"),
        "weights_sha256": info["weights"]["sha256"],
        "config": {
            k: getattr(cfg, k)
            for k in ("arch", "top", "image_size", "resize", "interpolation", "freeze_through", "dtype", "seed")
        },
        "classes": list(source.class_names),
        "data": spec,
        "split": split_name,
        "images": result["count"],
        "unreadable": len(source.skipped) + len(source.failed),
        "data_fingerprint": fingerprint,
        "data_fingerprint_of": of,
        "accuracy": result["accuracy"],
        "log_loss": result["loss"],
    }


def _tile(resize_mode: str, path: str) -> np.ndarray:
    """A top-losses tile: the file at report.TILE px, in the run's resize mode (what the network saw), bilinear."""
    from vgg_jax.data.resize import decode_resize
    from vgg_jax.inference.report import TILE

    return decode_resize(path, TILE, resize_mode, "bilinear")


def _print_report(written: dict, classes: list[str]) -> None:
    """The text report: headline numbers, confusion matrix, per-class precision/recall/f1/support, AUC."""
    width = max(9, *(len(c) for c in classes))
    say(f"accuracy {written['accuracy']:.4f}   log loss {written['log_loss']:.4f}   ({written['images']} images)")
    say("confusion matrix (rows: true, columns: predicted)")
    say(" " * (width + 2) + "".join(f"{c:>{width}}" for c in classes))
    for name, row in zip(classes, written["confusion_matrix"]["counts"]):
        say(f"  {name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    say(f"  {'':<{width}}" + "".join(f"{h:>{width}}" for h in ("precision", "recall", "f1", "support")))
    for name, m in written["per_class"].items():
        say(f"  {name:<{width}}" + "".join(f"{m[h]:>{width}.4f}" for h in ("precision", "recall", "f1"))
            + f"{m['support']:>{width}}")  # fmt: skip
    if "roc_auc" in written:
        auc = "undefined (one class only)" if written["roc_auc"] is None else f"{written['roc_auc']:.4f}"
        say(f"ROC AUC {auc}   (score: {written['roc_auc_score']})")


FORMATS = ("kaggle", "full")


def predict(
    run_dir: str | Path,
    target: str,
    csv_path: str | None = None,
    clip: float | None = None,
    batch_size: int | None = None,
    fmt: str = "kaggle",
) -> Path:
    """Writes a CSV for every image in `target`, in id order: `kaggle` id,label (Kaggle Dogs vs Cats: label =
    P(class 1); a column per class beyond two), or `full` path, predicted class and every class's probability."""
    from vgg_jax import data

    if fmt not in FORMATS:
        raise UserError(f"`format` must be kaggle or full. Received: {fmt!r}")
    if clip is not None and not 0 <= clip < 0.5:
        raise UserError(f"`clip` must be in [0, 0.5). Received: {clip}")
    out = Path(csv_path or Path(run_dir) / "predictions.csv")
    check_writable(out, "CSV")  # before any checkpoint is loaded
    cfg, classes, run_model, trainable, frozen = load_run(run_dir)
    source = data.open_source(target, "test")
    say(f"predict: {source.describe()}")
    bs = batch_size or cfg.eval_batch_size or cfg.batch_size
    parallel.check_batch_size(bs, run_model.mesh)
    result = evaluate_batches(
        run_model.eval_fn, trainable, frozen, _batches(data, source, cfg, bs, labelled=False), run_model.mesh
    )
    write = _write_full if fmt == "full" else _write_kaggle
    write(out, source, result["ids"], result["probs"], classes, clip)
    return out


def _write_kaggle(out: Path, source, ids: list[str], probs: np.ndarray, classes: list[str], clip: float | None) -> None:
    """id,label (label = P(class 1); a column per class beyond two). Files that could not be decoded still get a
    row, since a Kaggle submission needs every id: the uninformative prior."""
    unreadable = source.unreadable_ids
    if unreadable:
        say(
            f"predict: {len(unreadable)} unreadable image(s) get probability {1 / len(classes):.2f}: {', '.join(unreadable[:5])}"
        )
        probs = np.concatenate([probs, np.full((len(unreadable), len(classes)), 1 / len(classes))])
        ids = ids + unreadable
    if clip:
        probs = np.clip(probs, clip, 1 - clip)
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


def _write_full(out: Path, source, ids: list[str], probs: np.ndarray, classes: list[str], clip: float | None) -> None:
    """path,predicted,<class>...: every class's probability (float32, 9 digits); unreadable files get empty cells."""
    from vgg_jax.inference.report import number

    predicted = probs.argmax(-1)
    if clip:
        probs = np.clip(probs, clip, 1 - clip)
    unreadable = [p for p, _ in source.skipped + source.failed if source.id_of(p) is not None]
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "predicted", *classes])
        rows = zip(_row_paths(source, ids), predicted, probs)
        writer.writerows([printable(path), classes[k], *map(number, p)] for path, k, p in rows)
        writer.writerows([printable(p), "", *[""] * len(classes)] for p in unreadable)
    if unreadable:
        say(
            f"predict: {len(unreadable)} unreadable image(s) get empty cells: {', '.join(map(printable, unreadable[:5]))}"
        )
    clipped = f"; clipped to [{clip}, {1 - clip}]" if clip else ""
    say(
        f"wrote {out} ({len(ids) + len(unreadable)} rows: path, predicted class, P(class) for {', '.join(classes)}{clipped})"
    )


def _batches(data, source, cfg: TrainConfig, batch_size: int, labelled: bool = True):
    for b in data.eval_batches(source, batch_size, image_size=cfg.image_size, resize=cfg.resize,
                               interpolation=cfg.interpolation, workers=None):  # fmt: skip
        label = b["label"] if labelled else np.zeros(len(b["mask"]), np.int32)
        yield {"inputs": b["image"], "label": label, "mask": b["mask"], "id": b["id"]}
