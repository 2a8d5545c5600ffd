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
    random: bool = False  # a params file whose metadata says its weights are random (the demo's)

    @property
    def label(self) -> str:
        if not self.path:
            return "RANDOM backbone (no weights file)"
        return f"{self.path} ({'RANDOM weights, ' if self.random else ''}sha256 {self.sha256[:12]})"


IMAGENET_ARCHS = ("vgg16", "vgg19")  # the architectures Keras publishes ImageNet weights for


def resolve_weights(spec: str | None, arch_name: str = "vgg16", include_top: bool = True) -> Weights:
    """A params file path (or "imagenet": downloaded and converted once, the no-top file without `include_top`; or
    None/"random") -> Weights with the file's sha256 and whether its metadata marks it random."""
    if spec in (None, "", "random"):
        return Weights(None, None)
    path = _imagenet(arch_name, include_top) if spec == "imagenet" else Path(spec)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file; convert Keras files with `vgg-jax convert`")
    random = params_io.read_metadata(path).get("weights") == "random"
    return Weights(str(path), file_digest(path), random)


def _imagenet(arch_name: str, include_top: bool) -> Path:
    """The converted official ImageNet params for --arch, downloaded and converted on first use."""
    from convert.download import imagenet_params

    if arch_name not in IMAGENET_ARCHS:
        raise UserError(
            f"--weights imagenet: Keras publishes ImageNet weights for vgg16 and vgg19 only, not {arch_name}; "
            "pass --weights random or a params file"
        )
    if not include_top and (full := imagenet_params_path(arch_name)).is_file():
        return full  # the full file serves a no-top model too
    try:
        return imagenet_params(arch_name if include_top else f"{arch_name}-notop")
    except UserError as e:
        raise UserError(f"{e}; or train a random backbone with --weights random") from None


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
    new = new_layers(model, like)
    backbone, _ = params_io.load_checked(
        weights.path,
        {k: v for k, v in like.items() if k not in new},
        cfg.arch,
        wanted=f"but --arch is {cfg.arch}",
        no_top_hint="--top fc needs fc1/fc2: use the full file or --top avg",
    )
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
