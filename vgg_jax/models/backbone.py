"""The VGG conv blocks, shared by the Keras-shaped `VGG` and the transfer `Classifier`.

Each network holds a `Backbone` and shares its scope with it (`flax.linen.share_scope`), so the conv params
sit beside the network's own layers under their Keras names: {"block1_conv1": ..., "fc1": ...}, never
{"backbone": {...}}. Every params file and checkpoint written before the networks were split this way loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax.models import arch


class Backbone(nn.Module):
    """VGG's conv blocks: 3x3 convs with ReLU named like the Keras layers (`block{b}_conv{i}`), each block
    ending in a 2x2 max-pool. `depths` are convs per block, `widths` their channels; the defaults are VGG16."""

    depths: Sequence[int] = arch.DEPTHS["vgg16"]
    widths: Sequence[int] = arch.WIDTHS
    dtype: Any = jnp.float32

    def setup(self) -> None:
        for b, (n, width) in enumerate(zip(self.depths, self.widths), 1):
            for i in range(1, n + 1):
                setattr(self, f"block{b}_conv{i}", nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype))

    def block(self, b: int, x: jax.Array) -> jax.Array:
        """Conv block `b` (1-based): its 3x3 convs with ReLU, then the 2x2 max-pool (Keras' `block{b}_pool`)."""
        x = jnp.asarray(x, self.dtype)
        for i in range(1, self.depths[b - 1] + 1):
            x = nn.relu(getattr(self, f"block{b}_conv{i}")(x))
        return nn.max_pool(x, (2, 2), strides=(2, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        """All blocks: [B, H, W, 3] preprocessed images -> [B, H/32, W/32, C] block5_pool features."""
        for b in range(1, len(self.depths) + 1):
            x = self.block(b, x)
        return x


def global_pool(x: jax.Array, how: str) -> jax.Array:
    """Global pooling of [B, H, W, C] features to [B, C]: "avg" (mean) or "max", as Keras' `pooling`."""
    return x.mean(axis=(1, 2)) if how == "avg" else x.max(axis=(1, 2))
