"""The transfer-learning network: VGG conv blocks, a top (the ImageNet fc1/fc2, global pooling, or a new MLP)
and a new `head`, run whole or from any named cut, so a feature cache can feed the layers above it.

Parameter names stay Keras' (`block5_conv3`, `fc1`, `fc2`) plus `mlp1..` and `head`, so converted ImageNet
params load as they are, minus `predictions`.

Stages, in order: `input`, `block1_pool` .. `block5_pool`, then for the fc top `fc1` and `fc2` (each the
ReLU output, before its dropout), then `logits`. Dropout follows fc1 and fc2 in training whether they are
frozen or not, as Keras' Dropout layer did in the recipe (it ignores `trainable`); the MLP top has dropout
after each of its layers. Masks are drawn per example from the keys the step passes in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax.models import arch
from vgg_jax.models.backbone import Backbone, global_pool

POOLED_TOPS = ("avg", "max")
MLP_SPEC = re.compile(r"mlp:([1-9]\d*(?:,[1-9]\d*)*)")


def mlp_units(top: str) -> tuple[int, ...] | None:
    """'mlp:256,128' -> (256, 128); None for any other top (malformed mlp specs included)."""
    match = MLP_SPEC.fullmatch(top)
    return tuple(int(u) for u in match.group(1).split(",")) if match else None


def is_top(top: str) -> bool:
    """fc, avg, max, or a well-formed mlp:UNITS[,UNITS...]."""
    return top == "fc" or top in POOLED_TOPS or mlp_units(top) is not None


class Classifier(nn.Module):
    """The VGG conv blocks (`Backbone`), a top, and a new `head` where VGG has its 1000-way `predictions` (the
    recipe: one sigmoid unit).

    Attributes:
      depths, widths, fc_units, dtype: as `VGG`'s (the defaults are VGG16's); params stay float32.
      top: "fc" keeps fc1 and fc2 as in the recipe; "avg"/"max" pool block5 globally instead (for no-top
        weights); "mlp:256[,128...]" puts new Dense+ReLU+dropout layers on the flattened block5_pool.
      head_units: 1 for two classes (sigmoid), else the number of classes (softmax).
      dropout_rate: rate of the dropout after fc1, fc2 and every MLP layer in training.
    """

    depths: Sequence[int] = arch.DEPTHS["vgg16"]
    widths: Sequence[int] = arch.WIDTHS
    fc_units: int = arch.FC_UNITS
    dtype: Any = jnp.float32
    top: str = "fc"
    head_units: int = 1
    dropout_rate: float = 0.5

    def setup(self) -> None:
        if not is_top(self.top):
            raise ValueError(f"`top` must be fc, avg, max or mlp:UNITS[,UNITS...]. Received: top={self.top!r}")
        # One scope with the conv blocks, so params are flat and Keras-named: {"block1_conv1": ..., "head": ...}.
        self.backbone = Backbone(depths=self.depths, widths=self.widths, dtype=self.dtype)
        nn.share_scope(self, self.backbone)
        if self.top == "fc":
            self.fc1 = nn.Dense(self.fc_units, dtype=self.dtype)
            self.fc2 = nn.Dense(self.fc_units, dtype=self.dtype)
        for i, units in enumerate(mlp_units(self.top) or (), 1):
            setattr(self, f"mlp{i}", nn.Dense(units, dtype=self.dtype))
        self.head = nn.Dense(self.head_units, dtype=self.dtype)

    def stages(self) -> tuple[str, ...]:
        """The named points a forward pass can start or stop at, in order."""
        blocks = tuple(f"block{b}_pool" for b in range(1, len(self.depths) + 1))
        return ("input", *blocks, *(("fc1", "fc2") if self.top == "fc" else ()), "logits")

    def stage_of(self, layer: str) -> str:
        """The stage whose output a parameter layer produces: block3_conv2 -> block3_pool, mlp1 -> logits."""
        match = re.fullmatch(r"block(\d+)_conv\d+", layer)
        if match:
            return f"block{match.group(1)}_pool"
        return layer if layer in ("fc1", "fc2") else "logits"

    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        dropout_keys: jax.Array | None = None,
        start: str = "input",
        stop: str = "logits",
    ) -> jax.Array:
        """Runs the stages after `start` up to and including `stop`: preprocessed images (start="input") or a
        cut's output in; float32 logits [B, head_units] (stop="logits") or a cut's output out.

        In training, dropout needs `dropout_keys`: one PRNG key per example (the step derives them from the
        step number and the example's row), so a cached and an uncached run draw the same masks."""
        names = self.stages()
        first, last = names.index(start), names.index(stop)
        if first > last:
            raise ValueError(f"start {start!r} comes after stop {stop!r}; stages are {names}")
        for name in names[first + 1 : last + 1]:
            x = self._stage(name, x, train, dropout_keys)
        return x

    def _stage(self, name: str, x: jax.Array, train: bool, keys: jax.Array | None) -> jax.Array:
        if name.startswith("block"):
            return self.backbone.block(int(name[len("block") : -len("_pool")]), x)
        if name == "fc1":
            return nn.relu(self.fc1(x.reshape((x.shape[0], -1))))
        if name == "fc2":
            return nn.relu(self.fc2(self._dropout(x, train, keys, 1)))
        if self.top == "fc":
            x = self._dropout(x, train, keys, 2)
        elif self.top in POOLED_TOPS:
            x = global_pool(x, self.top)
        else:
            x = x.reshape((x.shape[0], -1))
            for i in range(1, len(mlp_units(self.top)) + 1):
                x = self._dropout(nn.relu(getattr(self, f"mlp{i}")(x)), train, keys, i)
        return self.head(x).astype(jnp.float32)  # float32 even under bfloat16 compute, for the loss

    def _dropout(self, x: jax.Array, train: bool, keys: jax.Array | None, layer: int) -> jax.Array:
        """Inverted dropout with one mask per example, drawn from fold_in(that example's key, layer)."""
        if not train or self.dropout_rate == 0:
            return x
        if keys is None:
            raise ValueError("dropout in training needs dropout_keys: one PRNG key per example")
        keep = 1.0 - self.dropout_rate

        def one(key, row):
            mask = jax.random.bernoulli(jax.random.fold_in(key, layer), keep, row.shape)
            return jnp.where(mask, row / keep, jnp.zeros_like(row))

        return jax.vmap(one)(keys, x)


def cut_shape(model: Classifier, cut: str, image_size: int) -> tuple[int, ...]:
    """Per-example shape of a stage's output: (H, W, C) for blockN_pool, (fc_units,) for fc1/fc2."""
    if cut in ("fc1", "fc2"):
        return (model.fc_units,)
    b = int(cut[len("block") : -len("_pool")])
    side = image_size // 2**b
    return (side, side, model.widths[b - 1])


def apply_fn(model: Classifier, start: str = "input"):
    """apply_fn for the steps: uint8 images (start="input"; caffe preprocessing runs inside the jitted step)
    or the output of the cut `start` (from the feature cache) -> logits."""
    from vgg_jax.models.preprocess import preprocess_input

    def apply(params, inputs, train, dropout_keys):
        if start == "input":
            inputs = preprocess_input(inputs, model.dtype)
        return model.apply({"params": params}, inputs, train=train, dropout_keys=dropout_keys, start=start)

    return apply


def image_apply_fn(model: Classifier):
    """apply_fn on uint8 image batches: the whole network."""
    return apply_fn(model, "input")
