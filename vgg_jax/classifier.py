"""The transfer-learning network: VGG conv blocks, the ImageNet fc1/fc2 (or global pooling), and a new `head`.

Parameter names stay Keras' (`block5_conv3`, `fc1`, `fc2`) plus `head`, so converted ImageNet params
load as they are, minus `predictions`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax.model import VGG

TOPS = ("fc", "avg", "max")


class Classifier(VGG):
    """VGG with its 1000-way `predictions` replaced by `head` (the recipe: one sigmoid unit).

    Attributes (beyond VGG's depths/widths/fc_units/dtype):
      top: "fc" keeps fc1 and fc2 as in the recipe; "avg"/"max" pool block5 globally instead
        (for no-top weights).
      head_units: 1 for two classes (sigmoid), else the number of classes (softmax).
      dropout_on: fc layers that get dropout (rate `dropout_rate`) in training: the trainable ones.
    """

    include_top: bool = False  # VGG's own top is not built; fc1/fc2/head are built below
    top: str = "fc"
    head_units: int = 1
    dropout_rate: float = 0.5
    dropout_on: tuple[str, ...] = ()

    def setup(self) -> None:
        super().setup()
        if self.top not in TOPS:
            raise ValueError(f"`top` must be one of {TOPS}. Received: top={self.top!r}")
        if self.top == "fc":
            self.fc1 = nn.Dense(self.fc_units, dtype=self.dtype)
            self.fc2 = nn.Dense(self.fc_units, dtype=self.dtype)
        self.head = nn.Dense(self.head_units, dtype=self.dtype)
        self.dropout = nn.Dropout(self.dropout_rate)

    def backbone(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Preprocessed images [B, H, W, 3] -> the features the head reads: fc2 output or pooled block5."""
        x = self.features(x)
        if self.top == "avg":
            return x.mean(axis=(1, 2))
        if self.top == "max":
            return x.max(axis=(1, 2))
        x = x.reshape((x.shape[0], -1))
        for name, layer in (("fc1", self.fc1), ("fc2", self.fc2)):
            x = nn.relu(layer(x))
            if name in self.dropout_on:
                x = self.dropout(x, deterministic=not train)
        return x

    def head_logits(self, features: jax.Array) -> jax.Array:
        """Features -> float32 logits [B, head_units] (float32 even under bfloat16 compute, for the loss)."""
        return self.head(features).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head_logits(self.backbone(x, train))


def image_apply_fn(model: Classifier):
    """apply_fn for the step on uint8 image batches: caffe preprocessing runs inside the jitted step."""
    from vgg_jax.preprocess import preprocess_input

    def apply(params, images, train, rng):
        return model.apply(
            {"params": params}, preprocess_input(images, model.dtype), train=train, rngs={"dropout": rng}
        )

    return apply


def feature_apply_fn(model: Classifier):
    """apply_fn for the step on cached backbone features: only the head runs."""

    def apply(params, features, train, rng):
        return model.apply({"params": params}, features, method=Classifier.head_logits)

    return apply
