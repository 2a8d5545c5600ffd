"""Keras-shaped factories: `VGG16(weights=..., include_top=..., pooling=..., classes=...)` -> (model, params).

A thin public layer: it checks the arguments and picks between the plain VGG (`vgg_jax.models.pretrained`) and
the trained Classifier of a `vgg-jax export` file (`vgg_jax.inference.predictor.read_export`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn

from vgg_jax.errors import UserError
from vgg_jax.models import params_io
from vgg_jax.models.arch import MIN_IMAGE_SIZE
from vgg_jax.models.pretrained import pretrained_vgg
from vgg_jax.models.vgg import POOLINGS


def build(
    name: str,
    weights: str | os.PathLike | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    dtype: Any = None,
    input_size: int | None = None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """A VGG model and its params, or the trained Classifier of a file `vgg-jax export` wrote.

    Args:
      name: "vgg11", "vgg13", "vgg16" or "vgg19".
      weights: None (random init), "imagenet" (the official file: downloaded, md5-checked and converted on
        first use, then cached),
        or the path of a params file written by `vgg-jax convert` or `vgg-jax export`.
      include_top, pooling, classes, classifier_activation: as in `keras.applications.VGG16`.
      dtype: computation dtype (default float32, or an exported model's own); params stay float32.
      input_size: image side used to infer fc1's shape (must be 224 with the ImageNet top).
      input_shape: Keras' alternative to input_size: (size, size, 3), or (None, None, 3) without a top.

    Returns (module, params). Usually a `VGG` (`vgg_jax.models.vgg`): preprocessed images -> softmax
    probabilities [B, classes] (logits with classifier_activation=None), or block5 features without the
    top. With include_top and an exported file (it has a trained `head`), the transfer `Classifier`
    (`vgg_jax.models.classifier`) that run trained, rebuilt from the file's metadata: preprocessed images
    [B, S, S, 3] -> float32 logits [B, 1] (sigmoid head, two classes) or [B, classes] (softmax); `classes`,
    `pooling` and `classifier_activation` do not apply to it, and `vgg_jax.load(path)` gives its class
    names and a ready `predict`.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    size = _input_size(input_size, input_shape)
    if weights is not None and weights != "imagenet" and include_top and "head" in params_io.load_keys(weights):
        return _exported(name, weights, size, dtype)
    return pretrained_vgg(
        name,
        weights,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        dtype=dtype,
        image_size=size,
        seed=seed,
    )


def _exported(name: str, path: str | os.PathLike, size: int | None, dtype: Any) -> tuple[nn.Module, dict]:
    """The Classifier and params of an exported file, checked against the factory's architecture and input size."""
    from vgg_jax.inference.predictor import read_export

    model, params, cfg, _ = read_export(path, name)
    if size is not None and size != cfg.image_size and cfg.top == "fc":
        raise UserError(
            f"{path}: a model for {cfg.image_size}x{cfg.image_size} images (its fc1 fixes the size), "
            f"not {size}x{size}; leave input_size/input_shape out"
        )
    return (model if dtype is None else model.clone(dtype=dtype)), params


def _input_size(input_size: int | None, input_shape: Sequence | None) -> int | None:
    """The image side from input_size or Keras' input_shape=(size, size, 3); None when neither fixes it."""
    if input_shape is None:
        return input_size
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    square = len(shape) == 3 and shape[0] == shape[1] and shape[2] == 3
    if not square or not (shape[0] is None or _is_size(shape[0])):
        raise UserError(
            f"input_shape must be (size, size, 3) with size >= {MIN_IMAGE_SIZE}: square RGB images, channels last. "
            f"Received: input_shape={input_shape!r}"
        )
    if input_size is not None and input_size != shape[0]:
        raise UserError(f"input_size={input_size} and input_shape={input_shape!r} disagree; pass one of them")
    return shape[0]


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= MIN_IMAGE_SIZE


VGG11 = partial(build, "vgg11")
VGG13 = partial(build, "vgg13")
VGG16 = partial(build, "vgg16")
VGG19 = partial(build, "vgg19")
