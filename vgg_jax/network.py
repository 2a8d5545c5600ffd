"""Build the transfer-learning Classifier for a config and fill its params: ImageNet (or given) weights
for the backbone, loaded without a random init, and a freshly initialised head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from vgg_jax import arch, params_io
from vgg_jax.classifier import Classifier, cut_shape
from vgg_jax.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.paths import file_digest, imagenet_params_path

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass(frozen=True)
class Weights:
    path: str | None  # None = random backbone
    sha256: str | None

    @property
    def label(self) -> str:
        return f"{self.path} (sha256 {self.sha256[:12]})" if self.path else "RANDOM backbone (no weights file)"


def resolve_weights(spec: str | None) -> Weights:
    """A params file path (or "imagenet", or None/"random") -> Weights with the file's sha256."""
    if spec in (None, "", "random"):
        return Weights(None, None)
    path = imagenet_params_path("vgg16") if spec == "imagenet" else Path(spec)
    if not path.is_file():
        hint = (
            "run `vgg-jax convert --download vgg16`"
            if spec == "imagenet"
            else "convert Keras files with `vgg-jax convert`"
        )
        raise UserError(f"{path}: no such weights file; {hint}")
    return Weights(str(path), file_digest(path))


def build_model(cfg: TrainConfig, num_classes: int) -> Classifier:
    """The Classifier `cfg` describes, with a sigmoid head for two classes, else softmax."""
    if cfg.arch not in arch.DEPTHS:
        raise UserError(f"--arch must be one of {', '.join(arch.DEPTHS)}. Received: {cfg.arch!r}")
    if num_classes < 2:
        raise UserError(f"{cfg.data}: needs at least 2 classes, found {num_classes}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"--dtype must be float32 or bfloat16. Received: {cfg.dtype!r}")
    return Classifier(
        depths=arch.DEPTHS[cfg.arch],
        widths=cfg.widths or arch.WIDTHS,
        fc_units=cfg.fc_units or arch.FC_UNITS,
        top=cfg.top,
        head_units=1 if num_classes == 2 else num_classes,
        dropout_rate=cfg.dropout,
        dtype=DTYPES[cfg.dtype],
    )


def init_params(model: Classifier, cfg: TrainConfig, weights: Weights) -> dict:
    """All params: the backbone from the weights file (shape-checked) or random; the new layers (head, and
    an MLP top's layers) fresh from cfg.seed."""
    sample = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    keys = {"params": jax.random.key(cfg.seed)}
    if weights.path is None:
        return jax.jit(model.init)(keys, sample)["params"]
    like = jax.eval_shape(model.init, keys, sample)["params"]
    meta = params_io.read_metadata(weights.path)
    if meta.get("architecture") not in (None, cfg.arch):
        raise UserError(f"{weights.path}: holds {meta['architecture']} params, but --arch is {cfg.arch}")
    new = new_layers(model, like)
    if cfg.top == "fc" and "fc1" not in params_io.load_keys(weights.path):
        raise UserError(
            f"{weights.path}: a no-top file (no fc1/fc2), but --top fc needs them; use the full file or --top avg"
        )
    backbone = params_io.load(weights.path, like={k: v for k, v in like.items() if k not in new})
    # The new layers alone are initialised randomly: a small jit from the last pretrained stage, not the whole init.
    start = "fc2" if cfg.top == "fc" else f"block{len(model.depths)}_pool"
    inputs = jnp.zeros((1, *cut_shape(model, start, cfg.image_size)), jnp.float32)
    fresh = jax.jit(lambda k, h: model.init(k, h, start=start))(keys, inputs)["params"]
    return {**jax.tree.map(jnp.asarray, backbone), **{k: fresh[k] for k in new}}


def new_layers(model: Classifier, params: dict) -> set[str]:
    """Layers no weights file holds: the head and an MLP top's layers (they run after every VGG stage)."""
    return {k for k in params if model.stage_of(k) == "logits"}


def param_bytes(tree) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))
