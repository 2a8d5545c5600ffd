"""Flax VGG11/13/16/19, layer for layer the Keras `keras.applications` network (names, NHWC, flatten order)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax.models import arch
from vgg_jax.models.backbone import Backbone, global_pool

POOLINGS = (None, "avg", "max")
ACTIVATIONS = (None, "softmax")


class VGG(nn.Module):
    """VGG on preprocessed NHWC input (see `vgg_jax.preprocess_input`).

    Attributes follow `keras.applications.VGG16`: with `include_top` the output is
    `[B, classes]` (softmax probabilities, or logits with `classifier_activation=None`);
    without it, `[B, H/32, W/32, 512]` block5_pool features, or `[B, 512]` with `pooling`.
    `depths`, `widths` and `fc_units` exist for small test variants; the defaults are VGG16.
    """

    depths: Sequence[int] = arch.DEPTHS["vgg16"]
    widths: Sequence[int] = arch.WIDTHS
    fc_units: int = arch.FC_UNITS
    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000
    classifier_activation: str | None = "softmax"
    dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={self.pooling!r}")
        if self.classifier_activation not in ACTIVATIONS:
            raise ValueError(
                "`classifier_activation` must be 'softmax' or None. "
                f"Received: classifier_activation={self.classifier_activation!r}"
            )
        # One scope with the conv blocks, so params are flat and Keras-named: {"block1_conv1": ..., "fc1": ...}.
        self.backbone = Backbone(depths=self.depths, widths=self.widths, dtype=self.dtype)
        nn.share_scope(self, self.backbone)
        if self.include_top:
            self.fc1 = nn.Dense(self.fc_units, dtype=self.dtype)
            self.fc2 = nn.Dense(self.fc_units, dtype=self.dtype)
            self.predictions = nn.Dense(self.classes, dtype=self.dtype)

    def features(self, x: jax.Array) -> jax.Array:
        """Conv blocks: [B, H, W, 3] preprocessed images -> [B, H/32, W/32, C] block5_pool output."""
        return self.backbone(x)

    def top(self, x: jax.Array) -> jax.Array:
        """fc1 -> fc2 -> predictions on block5_pool features; flattening NHWC matches Keras' Flatten."""
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(self.fc1(x))
        x = nn.relu(self.fc2(x))
        x = self.predictions(x)
        return nn.softmax(x) if self.classifier_activation == "softmax" else x

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        if self.include_top:
            return self.top(x)
        return x if self.pooling is None else global_pool(x, self.pooling)
