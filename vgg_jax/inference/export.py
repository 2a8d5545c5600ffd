"""`vgg-jax export`: a run's trained network as a file other code loads (see `export`).

Formats: `params` (our safetensors, for `vgg_jax.load`), `keras` and `weights.h5` (a plain Keras 3 model,
vgg_jax/export_keras.py), `stablehlo` (a `jax.export` function, vgg_jax/export_hlo.py) and `savedmodel`
(TensorFlow, through jax2tf, vgg_jax/export_tf.py). All but `params` get a sidecar `<output>.json` with the
class names, image size, resize mode and interpolation the exported graph does not carry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_path, check_writable
from vgg_jax.inference.evaluate import load_run
from vgg_jax.log import say
from vgg_jax.models.weights import resolve_weights
from vgg_jax.train import parallel, rundir

FORMATS = ("params", "keras", "weights.h5", "stablehlo", "savedmodel")
SUFFIXES = {".safetensors": "params", ".keras": "keras", ".weights.h5": "weights.h5", ".jaxexport": "stablehlo"}
KERAS_SUFFIXES = {"keras": ".keras", "weights.h5": ".weights.h5"}
WHAT = {"params": "params file", "keras": "Keras file", "weights.h5": "Keras weights file",
        "stablehlo": "jax.export file", "savedmodel": "SavedModel folder"}  # fmt: skip


def export(run_dir: str | Path, out: str | Path, which: str = "best", fmt: str | None = None) -> Path:
    """Writes the run's whole network (frozen + trained params, `head` included) in format `fmt` (None: from
    `out`'s suffix). The output and the format's library are checked before the checkpoint is loaded."""
    fmt = output_format(out, fmt)
    _check_output(out, fmt)
    _import_library(fmt)
    cfg, classes, params = _load(run_dir, which)
    meta = _metadata(cfg, classes, run_dir)
    if fmt == "params":
        from vgg_jax.models import params_io

        params_io.save(out, params, meta)
    else:
        meta = {**meta, **describe(fmt, cfg, classes)}
        _write(fmt, out, cfg, meta, params)
        write_sidecar(out, meta)
    say(f"wrote {out}")
    return Path(out)


def output_format(out: str | Path, fmt: str | None) -> str:
    """The export format: `fmt` checked, or inferred from `out`'s suffix; one-line UserError otherwise."""
    name = Path(out).name
    if fmt is not None:
        if fmt not in FORMATS:
            raise UserError(f"`format` must be one of {', '.join(FORMATS)}. Received: {fmt!r}")
        if fmt in KERAS_SUFFIXES and not (name.endswith(KERAS_SUFFIXES[fmt]) and name != KERAS_SUFFIXES[fmt]):
            raise UserError(f"{out}: a {fmt} export must be named *{KERAS_SUFFIXES[fmt]} (Keras loads no other name)")
        return fmt
    found = next((f for suffix, f in SUFFIXES.items() if name.endswith(suffix) and name != suffix), None)
    if found is None:
        raise UserError(
            f"{out}: cannot tell the export format from the name; give `format` ({', '.join(FORMATS)}) "
            f"or a name ending in {', '.join(SUFFIXES)}"
        )
    return found


def sidecar_path(out: str | Path) -> Path:
    """Where the class names and input description of a non-params export go: `<out>.json`."""
    out = Path(out)
    return out.with_name(f"{out.name}.json")


def write_sidecar(out: str | Path, meta: dict[str, Any]) -> None:
    """Writes `<out>.json` atomically; if that fails, the export itself is removed too (no half result)."""
    import shutil

    try:
        with atomic_path(sidecar_path(out)) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
    except UserError:
        shutil.rmtree(out) if Path(out).is_dir() else Path(out).unlink(missing_ok=True)
        raise


def describe(fmt: str, cfg, classes: list[str]) -> dict[str, Any]:
    """What the exported graph takes and returns, for the sidecar."""
    s = cfg.image_size
    if fmt == "stablehlo" or fmt == "savedmodel":
        from vgg_jax.inference.export_hlo import PLATFORMS

        inputs = f"uint8 [N, {s}, {s}, 3] RGB images already resized to {s}x{s} ({cfg.resize}, {cfg.interpolation})"
        output = f"float32 [N, {len(classes)}] probabilities, columns in `classes` order"
        return {"format": fmt, "input": inputs, "output": output, "platforms": list(PLATFORMS)}
    inputs = f"float32 [N, {s}, {s}, 3]: RGB images resized to {s}x{s}, then keras.applications.vgg16.preprocess_input"
    output = "P(class 1) [N, 1] (sigmoid)" if len(classes) == 2 else f"[N, {len(classes)}] probabilities (softmax)"
    return {"format": fmt, "input": inputs, "output": output, "dropout": cfg.dropout}


def _check_output(out: str | Path, fmt: str) -> None:
    if fmt == "savedmodel" and Path(out).exists():
        raise UserError(f"{out}: already exists; give a new folder name for the SavedModel (or remove this one)")
    check_writable(out, WHAT[fmt])


def _import_library(fmt: str) -> None:
    """Imports the library `fmt` needs now, so a missing one is a one-line UserError before any work."""
    if fmt in ("keras", "weights.h5"):
        from vgg_jax.inference.export_keras import import_keras

        import_keras()
    elif fmt == "savedmodel":
        from vgg_jax.inference.export_tf import import_tensorflow

        import_tensorflow()


def _write(fmt: str, out: str | Path, cfg, meta: dict[str, Any], params: dict) -> None:
    """Writes a keras, weights.h5, stablehlo or savedmodel export of `params`."""
    if fmt in ("keras", "weights.h5"):
        from vgg_jax.inference import export_keras

        (export_keras.write_keras if fmt == "keras" else export_keras.write_weights)(out, meta, params)
        return
    from vgg_jax.inference.export_hlo import write_stablehlo
    from vgg_jax.inference.export_tf import write_savedmodel
    from vgg_jax.train.network import build_model

    write = write_stablehlo if fmt == "stablehlo" else write_savedmodel
    write(out, build_model(cfg, len(meta["classes"])), params, cfg.image_size)


def _load(run_dir: str | Path, which: str) -> tuple[Any, list[str], dict]:
    """(config, class names, all params as float32 host arrays) of the run's `which` checkpoint."""
    from vgg_jax.models.freeze import merge

    cfg, classes, _, trainable, frozen = load_run(run_dir, which=which)
    return cfg, classes, parallel.to_host(merge(trainable, frozen))


def _metadata(cfg, classes: list[str], run_dir: str | Path) -> dict[str, Any]:
    from vgg_jax.inference.predictor import export_metadata

    meta = export_metadata(cfg, classes, str(run_dir))
    if _random_backbone(run_dir):  # stays labelled RANDOM wherever the file goes
        meta["weights"] = "random"
    return meta


def _random_backbone(run_dir: str | Path) -> bool:
    """Whether the run trained on a random backbone: no weights file, or one whose metadata says random."""
    recorded = rundir.read_run(run_dir)["weights"]
    if recorded["sha256"] is None:
        return True
    path = recorded.get("path")
    return bool(path and Path(path).is_file() and resolve_weights(path).random)
