"""Keras-shaped factories: `VGG16(weights=..., include_top=..., pooling=..., classes=...)` -> (model, params)."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from vgg_jax import arch, params_io
from vgg_jax.errors import UserError
from vgg_jax.model import POOLINGS, VGG
from vgg_jax.paths import imagenet_params_path


def build(
    name: str,
    weights: str | os.PathLike | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    dtype: Any = jnp.float32,
    input_size: int = arch.IMAGE_SIZE,
    seed: int = 0,
) -> tuple[VGG, dict]:
    """A VGG model and its params.

    Args:
      name: "vgg11", "vgg13", "vgg16" or "vgg19".
      weights: None (random init), "imagenet" (the file `vgg-jax convert --download` cached),
        or the path of a params file written by `vgg-jax convert`.
      include_top, pooling, classes, classifier_activation: as in `keras.applications.VGG16`.
      dtype: computation dtype; params stay float32.
      input_size: image side used to infer fc1's shape (must be 224 with the ImageNet top).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    model = VGG(
        depths=arch.DEPTHS[name],
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        dtype=dtype,
    )
    sample = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
    if weights is None:
        return model, jax.jit(model.init)(jax.random.key(seed), sample)["params"]
    if weights == "imagenet":
        # A full file serves include_top=False too; the no-top download is the fallback.
        candidates = [imagenet_params_path(name)] + ([] if include_top else [imagenet_params_path(f"{name}-notop")])
        weights = next((c for c in candidates if c.exists()), None)
        if weights is None:
            raise UserError(f"{candidates[0]}: no ImageNet params yet; run `vgg-jax convert --download {name}`")
    meta = params_io.read_metadata(weights)
    if meta.get("architecture") not in (None, name):
        raise UserError(f"{weights}: holds {meta['architecture']} params, not {name}")
    like = jax.eval_shape(model.init, jax.random.key(seed), sample)["params"]
    return model, jax.tree.map(jnp.asarray, params_io.load(weights, like=like))


VGG11 = partial(build, "vgg11")
VGG13 = partial(build, "vgg13")
VGG16 = partial(build, "vgg16")
VGG19 = partial(build, "vgg19")
