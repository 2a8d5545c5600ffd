"""The plain VGG of the Keras-shaped factories (`vgg_jax.VGG16(...)`) with its params: random, ImageNet or a file."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from vgg_jax.models import arch
from vgg_jax.models.vgg import VGG
from vgg_jax.models.weights import imagenet_path, load_backbone


def pretrained_vgg(
    name: str,
    weights: str | os.PathLike | None,
    *,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    dtype: Any,
    image_size: int | None,
    seed: int,
) -> tuple[VGG, dict]:
    """(VGG, params) as `vgg_jax.VGG16` documents them: `weights` None (random init from `seed`), "imagenet" or a
    params file, read without a random init; `image_size` None means 224 (it fixes fc1's shape only)."""
    model = VGG(
        depths=arch.DEPTHS[name],
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        dtype=dtype or jnp.float32,
    )
    sample = jnp.zeros((1, image_size or arch.IMAGE_SIZE, image_size or arch.IMAGE_SIZE, 3), jnp.float32)
    if weights is None:
        return model, jax.jit(model.init)(jax.random.key(seed), sample)["params"]
    if weights == "imagenet":
        weights = imagenet_path(name, include_top)
    like = jax.eval_shape(model.init, jax.random.key(seed), sample)["params"]
    return model, load_backbone(weights, like, name)
