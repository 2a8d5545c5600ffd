"""`vgg_jax.load(path)`: a trained model for inference, from a run folder or a file `vgg-jax export` wrote.

    predictor = vgg_jax.load("runs/dogscats")            # or "model.safetensors"
    probs = predictor.predict(["a.jpg", "b.jpg"])         # float32 [2, 2]: P(cats), P(dogs)

Images are decoded and resized as the run's pipeline did (vgg_jax.data.resize, with the run's resize mode and
interpolation) and go through one jitted function in fixed-size padded batches, so a new number of images
never recompiles.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.models import params_io
from vgg_jax.models.classifier import Classifier
from vgg_jax.train import rundir
from vgg_jax.train.config import TrainConfig

DEFAULT_BATCH_SIZE = 32
# The TrainConfig fields an export records, beside `architecture`, `classes` and `head_units`; `widths` and
# `fc_units` only when they are not VGG's own (None in the config).
MODEL_FIELDS = ("image_size", "resize", "interpolation", "top", "dtype")
OPTIONAL_FIELDS = ("widths", "fc_units")
REQUIRED_FIELDS = ("architecture", "classes", "head_units", *MODEL_FIELDS)


class Predictor:
    """A trained classifier for inference: `predict(images)` -> float32 probabilities [N, len(classes)].

    Attributes: `classes` (names, label order), `image_size`, `resize`, `interpolation` (how images are
    brought to image_size x image_size), `batch_size` (the fixed batch every call is padded to), `model`
    (the flax Classifier: preprocessed images -> logits) and `params`.
    """

    def __init__(
        self,
        model: Classifier,
        params: dict,
        classes: Sequence[str],
        image_size: int,
        resize: str = "squash",
        interpolation: str = "nearest",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        from vgg_jax.data.resize import check_options
        from vgg_jax.train.parallel import jit_options

        check_options(resize, interpolation)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
        self.model, self.params, self.classes = model, jax.device_put(params), list(classes)
        self.image_size, self.batch_size = image_size, batch_size
        self.resize, self.interpolation = resize, interpolation
        self._probs = jax.jit(probabilities_fn(model), **jit_options())

    def __repr__(self) -> str:
        return (
            f"Predictor(classes={self.classes}, image_size={self.image_size}, resize={self.resize!r}, "
            f"interpolation={self.interpolation!r}, batch_size={self.batch_size})"
        )

    def predict(self, x: Any) -> np.ndarray:
        """float32 probabilities [N, len(classes)] (two columns for a sigmoid head: P(class 0), P(class 1)).

        `x`: a uint8 array [N, H, W, 3] of any H, W; a list of image file paths; one image path; or a
        folder (its images in `files(folder)` order, `vgg-jax predict`'s id order). Every image is
        resized to image_size by the run's resize mode and interpolation; a file that cannot be decoded
        is a one-line UserError naming it.
        """
        count, image = self._inputs(x)
        pending = [self._probs(self.params, batch) for batch in self._batches(count, image)]  # dispatched async
        rows = [np.asarray(p) for p in pending]
        out = np.concatenate(rows)[:count] if rows else np.zeros((0, len(self.classes)))
        return out.astype(np.float32)

    def files(self, folder: str | os.PathLike) -> list[str]:
        """The image files `predict(folder)` reads, in row order: `vgg-jax predict`'s; skipped files are left out."""
        from vgg_jax import data

        return list(data.open_source(folder, "test").paths)

    def _inputs(self, x: Any) -> tuple[int, Callable[[int], np.ndarray]]:
        """(N, i -> uint8 [S, S, 3] image i) for any accepted input."""
        if isinstance(x, (str, os.PathLike)):
            if Path(x).is_dir():
                x = self.files(x)
            elif Path(x).is_file():
                x = [x]
            else:
                raise UserError(f"{_shown(x)}: no such image file or folder")
        if isinstance(x, (list, tuple)):
            return len(x), self._path_reader(list(x))
        if isinstance(x, (np.ndarray, jax.Array)):
            return len(x), self._array_reader(np.asarray(x))
        raise UserError(
            f"predict takes a uint8 array [N, H, W, 3], a list of image paths or a folder. Received: {type(x).__name__}"
        )

    def _path_reader(self, paths: list) -> Callable[[int], np.ndarray]:
        from vgg_jax.data.resize import DecodeError, decode_resize

        bad = next((p for p in paths if not isinstance(p, (str, os.PathLike))), None)
        if bad is not None:
            raise UserError(f"predict: a list must hold image paths. Received an item of type {type(bad).__name__}")

        def read(i: int) -> np.ndarray:
            try:
                return decode_resize(paths[i], self.image_size, self.resize, self.interpolation)
            except DecodeError as e:
                raise UserError(f"{_shown(paths[i])}: {e}") from None

        return read

    def _array_reader(self, images: np.ndarray) -> Callable[[int], np.ndarray]:
        from PIL import Image

        from vgg_jax.data.resize import resize

        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:3]:
            raise UserError(
                "predict: images must be uint8 [N, H, W, 3] RGB arrays (as vgg_jax.load_image gives). "
                f"Received: {images.dtype} array of shape {images.shape}"
            )
        return lambda i: resize(Image.fromarray(images[i]), self.image_size, self.resize, self.interpolation)

    def _batches(self, count: int, image: Callable[[int], np.ndarray]) -> Iterator[np.ndarray]:
        """uint8 [batch_size, S, S, 3] batches of images 0..count-1; the last one padded with zeros."""
        size = self.image_size
        for lo in range(0, count, self.batch_size):
            batch = np.zeros((self.batch_size, size, size, 3), np.uint8)
            for k in range(lo, min(lo + self.batch_size, count)):
                batch[k - lo] = image(k)
            yield batch


def load(path: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE) -> Predictor:
    """A Predictor from a run folder (its best checkpoint) or a file `vgg-jax export` wrote."""
    where = Path(path)
    if (where / rundir.RUN_FILE).is_file():
        return _from_run(where, batch_size)
    if where.is_file():
        try:
            params_io.read_metadata(where)
        except UserError as e:
            _refuse(path, str(e).removeprefix(f"{where}: ").split(";")[0])
        model, params, cfg, classes = read_export(where)
        return Predictor(model, params, classes, cfg.image_size, cfg.resize, cfg.interpolation, batch_size)
    _refuse(path, "a folder without run.json" if where.is_dir() else "no such file or folder")


def _refuse(path: str | os.PathLike, what: str) -> NoReturn:
    raise UserError(
        f"{_shown(path)}: {what}; vgg_jax.load takes a run folder (`vgg-jax train --out`) or a `vgg-jax export` file"
    )


def _from_run(run_dir: Path, batch_size: int) -> Predictor:
    from vgg_jax.inference.evaluate import load_run
    from vgg_jax.models.freeze import merge
    from vgg_jax.train.parallel import to_host

    cfg, classes, restored, trainable, frozen = load_run(run_dir)
    params = to_host(merge(trainable, frozen))
    return Predictor(restored.model, params, classes, cfg.image_size, cfg.resize, cfg.interpolation, batch_size)


def export_metadata(cfg: TrainConfig, classes: Sequence[str], source: str) -> dict[str, Any]:
    """What `vgg-jax export` records beside the params: all `read_export` rebuilds the model and its inputs from."""
    from vgg_jax.train.network import build_model

    meta = {"architecture": cfg.arch, "classes": list(classes), "head_units": build_model(cfg, len(classes)).head_units}
    meta.update({f: getattr(cfg, f) for f in MODEL_FIELDS})
    meta.update({f: getattr(cfg, f) for f in OPTIONAL_FIELDS if getattr(cfg, f) is not None})
    return {**meta, "preprocessing": "caffe", "exported_from": source}


def read_export(
    path: str | os.PathLike, architecture: str | None = None
) -> tuple[Classifier, dict, TrainConfig, list[str]]:
    """(Classifier, params, model config, class names) of a file `vgg-jax export` wrote; one-line UserError
    for any other file, or when `architecture` is given and the file holds another one."""
    from vgg_jax.models.weights import load_backbone
    from vgg_jax.train.network import build_model

    meta = params_io.read_metadata(path)
    if "head" not in params_io.load_keys(path):
        raise UserError(
            f"{_shown(path)}: a params file without a trained head, not a `vgg-jax export` file; "
            "load ImageNet weights with vgg_jax.VGG16(weights=...)"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    if missing:
        raise UserError(
            f"{_shown(path)}: its metadata lacks {', '.join(missing)} (exported by an older vgg-jax?); "
            "export the run again with `vgg-jax export`"
        )
    cfg, classes = _model_config(path, meta), meta["classes"]
    model = build_model(cfg, len(classes))
    if meta["head_units"] != model.head_units:
        raise UserError(
            f"{_shown(path)}: metadata says {meta['head_units']!r} head units for {len(classes)} classes, "
            f"not {model.head_units}; the file is damaged"
        )
    sample = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    like = jax.eval_shape(model.init, jax.random.key(0), sample)["params"]
    return model, load_backbone(path, like, architecture or cfg.arch), cfg, list(classes)


def _model_config(path: str | os.PathLike, meta: dict[str, Any]) -> TrainConfig:
    """The metadata's model fields as a validated TrainConfig (damage -> one-line UserError)."""
    classes = meta["classes"]
    if not (
        isinstance(classes, list) and len(classes) >= 2
        and all(isinstance(c, str) for c in classes) and len(set(classes)) == len(classes)
    ):  # fmt: skip
        raise UserError(f"{_shown(path)}: metadata field 'classes' is not a list of 2 or more distinct names; damaged")
    fields = {f: meta[f] for f in (*MODEL_FIELDS, *OPTIONAL_FIELDS) if f in meta}
    if isinstance(fields.get("widths"), list):
        fields["widths"] = tuple(fields["widths"])
    cfg = TrainConfig(data=str(path), out=str(path), arch=meta["architecture"], **fields)
    try:
        cfg.validate()
    except (UserError, TypeError, ValueError) as e:
        raise UserError(f"{_shown(path)}: damaged metadata ({e})") from None
    return cfg


def probabilities_fn(model: Classifier) -> Callable[[dict, jax.Array], jax.Array]:
    """(params, uint8 images [N, S, S, 3]) -> probabilities [N, classes] (sigmoid: P(class 0), P(class 1)), as the
    eval step computes them: caffe preprocessing inside. Also what `vgg-jax export --format stablehlo` exports."""
    from vgg_jax.models.classifier import image_apply_fn
    from vgg_jax.train.step import probabilities

    apply = image_apply_fn(model)
    return lambda params, images: probabilities(apply(params, images, False, None))


def _shown(path: str | os.PathLike) -> str:
    from vgg_jax.data.source import printable

    return printable(os.fspath(path))
