"""Keras "caffe" preprocessing as pure jnp, meant to run inside the jitted step on uint8 batches."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# ImageNet channel means in BGR order, as in keras.applications.imagenet_utils (mode="caffe").
BGR_MEAN = (103.939, 116.779, 123.68)


def preprocess_input(images: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """RGB images in [0, 255] (uint8 or float), [..., H, W, 3] -> BGR, mean-subtracted, unscaled.

    Equals `keras.applications.vgg16.preprocess_input` for channels-last input. Batches travel
    to the device as uint8 (4x fewer bytes than float32) and are converted here.
    """
    x = jnp.asarray(images).astype(jnp.float32)[..., ::-1] - jnp.asarray(BGR_MEAN, jnp.float32)
    return x.astype(dtype)
