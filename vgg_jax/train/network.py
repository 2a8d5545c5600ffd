"""Build the transfer-learning Classifier for a config and fill its params: ImageNet (or given) weights
for the backbone, loaded without a random init, and a freshly initialised head."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from vgg_jax.errors import UserError
from vgg_jax.log import say as say_line
from vgg_jax.models import arch, params_io
from vgg_jax.models.classifier import Classifier, cut_shape
from vgg_jax.models.weights import SETTINGS, Weights, load_backbone
from vgg_jax.train.config import TrainConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(cfg: TrainConfig, num_classes: int) -> Classifier:
    """The Classifier `cfg` describes, with a sigmoid head for two classes, else softmax."""
    if cfg.arch not in arch.DEPTHS:
        raise UserError(f"`arch` must be one of {', '.join(arch.DEPTHS)}. Received: {cfg.arch!r}")
    if num_classes < 2:
        raise UserError(f"{cfg.data}: needs at least 2 classes, found {num_classes}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"`dtype` must be float32 or bfloat16. Received: {cfg.dtype!r}")
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
    backbone = load_backbone(weights.path, {k: v for k, v in like.items() if k not in new}, cfg.arch, SETTINGS)
    if not new:
        return backbone
    # The new layers alone are initialised randomly: a small jit from the last pretrained stage, not the whole init.
    start = "fc2" if cfg.top == "fc" else f"block{len(model.depths)}_pool"
    inputs = jnp.zeros((1, *cut_shape(model, start, cfg.image_size)), jnp.float32)
    fresh = jax.jit(lambda k, h: model.init(k, h, start=start))(keys, inputs)["params"]
    return {**backbone, **{k: fresh[k] for k in new}}


def _check_image_size(path: str, cfg: TrainConfig) -> None:
    """UserError when the file's fc1 was made for another image size than `image_size` (fc1's rows fix it)."""
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
            f"pass `image_size={size}` (or `top=avg` for another size)"
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
        keys = [k for k in f.keys() if k.split("/")[0] in layers]
        return {k: tuple(f.get_slice(k).get_shape()) for k in keys}


def new_layers(model: Classifier, params: dict) -> set[str]:
    """Layers no weights file holds: the head and an MLP top's layers (they run after every VGG stage)."""
    return {k for k in params if model.stage_of(k) == "logits"}


def param_bytes(tree) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))
