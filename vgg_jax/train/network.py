"""Build the transfer-learning Classifier for a config and fill its params: ImageNet (or given) weights
for the backbone, loaded without a random init, and a freshly initialised head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from vgg_jax.models import arch, params_io
from vgg_jax.models.classifier import Classifier, cut_shape
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.paths import file_digest, imagenet_params_path
from vgg_jax.log import say as say_line

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
    from vgg_jax.convert.download import imagenet_params

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


def init_params(
    model: Classifier, cfg: TrainConfig, weights: Weights, class_names: Sequence[str] | None = None
) -> dict:
    """All params: the backbone from the weights file (shape-checked) or random; the new layers (head, and
    an MLP top's layers) fresh from cfg.seed, or from the file when it has them (a `vgg-jax export` file, an
    imported fine-tuned Keras model) and they fit this run's top and class count.

    `class_names` (the data's; the trainer gives them, evaluate and load do not) turn on one line saying where
    the head starts from, or why a fresh one is trained, and a note when the file's class names differ."""
    sample = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    keys = {"params": jax.random.key(cfg.seed)}
    if weights.path is None:
        return jax.jit(model.init)(keys, sample)["params"]
    like = jax.eval_shape(model.init, keys, sample)["params"]
    new = new_layers(model, like)
    _check_image_size(weights.path, cfg)
    if _trained_top_fits(
        weights.path, cfg, {k: like[k] for k in new}, class_names, say_line if class_names else _quiet
    ):
        new = set()
    backbone, _ = params_io.load_checked(
        weights.path,
        {k: v for k, v in like.items() if k not in new},
        cfg.arch,
        wanted=f"but --arch is {cfg.arch}",
        no_top_hint="--top fc needs fc1/fc2: use the full file or --top avg",
    )
    if not new:
        return jax.tree.map(jnp.asarray, backbone)
    # The new layers alone are initialised randomly: a small jit from the last pretrained stage, not the whole init.
    start = "fc2" if cfg.top == "fc" else f"block{len(model.depths)}_pool"
    inputs = jnp.zeros((1, *cut_shape(model, start, cfg.image_size)), jnp.float32)
    fresh = jax.jit(lambda k, h: model.init(k, h, start=start))(keys, inputs)["params"]
    return {**jax.tree.map(jnp.asarray, backbone), **{k: fresh[k] for k in new}}


def _check_image_size(path: str, cfg: TrainConfig) -> None:
    """UserError when the file's fc1 was made for another image size than --image-size (fc1's rows fix it)."""
    meta = params_io.read_metadata(path)
    size = meta.get("image_size")
    if (
        cfg.top == "fc"
        and isinstance(size, int)
        and size // 32 != cfg.image_size // 32
        and "fc1" in params_io.load_keys(path)
    ):
        raise UserError(
            f"{path}: its fc1 takes the block5_pool of {size}x{size} images, not of {cfg.image_size}x{cfg.image_size}; "
            f"pass --image-size {size} (or --top avg for another size)"
        )


def _quiet(message: str) -> None:
    """Says nothing: where a run's params are rebuilt for inference, not started."""


def _trained_top_fits(
    path: str, cfg: TrainConfig, new: dict, class_names: Sequence[str] | None, say: Callable[[str], None]
) -> bool:
    """Whether the file's own head (and MLP layers) can start this run: same top, same shapes. Says in one line
    why a fresh head is trained when the file has one that does not fit, and notes differing class names."""
    if "head" not in params_io.load_keys(path):
        return False
    meta = params_io.read_metadata(path)
    theirs = meta.get("classes") if isinstance(meta.get("classes"), list) else None
    shapes = _shapes(path, set(new))
    want = {f"{layer}/{leaf}": tuple(x.shape) for layer, leaves in new.items() for leaf, x in leaves.items()}
    count = f"{len(theirs)} classes" if theirs else "its head"
    if meta.get("top") not in (None, cfg.top) or shapes != want:
        units = shapes.get("head/kernel", ("?", "?"))[1]
        say(
            f"weights: {path} has a trained head ({count}, top {meta.get('top', '?')}, {units} unit(s)) that does not "
            f"fit this run (top {cfg.top}, {want['head/kernel'][1]} unit(s)): a fresh head is trained"
        )
        return False
    if theirs and class_names is not None and list(class_names) != theirs:
        say(
            f"weights: {path} was trained on classes {', '.join(theirs)}; this data has {', '.join(class_names)}: "
            "the head starts from the file's, label by label in that order"
        )
    say(f"weights: starting from the trained {', '.join(sorted(new))} of {path}")
    return True


def _shapes(path: str, layers: set[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of the file's tensors in `layers`, without reading them."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        keys = [k for k in f.keys() if k.split("/")[0] in layers]  # noqa: SIM118 (safe_open is not iterable)
        return {k: tuple(f.get_slice(k).get_shape()) for k in keys}


def new_layers(model: Classifier, params: dict) -> set[str]:
    """Layers no weights file holds: the head and an MLP top's layers (they run after every VGG stage)."""
    return {k for k in params if model.stage_of(k) == "logits"}


def param_bytes(tree) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))
