"""Keras "caffe" preprocessing, inside jit on uint8 input, equals keras.applications' own."""

import jax
import jax.numpy as jnp
import keras
import numpy as np

from vgg_jax import preprocess_input


def test_matches_keras_preprocess_input_on_random_images():
    images = np.random.default_rng(0).integers(0, 256, (4, 37, 53, 3), dtype=np.uint8)
    want = keras.applications.vgg16.preprocess_input(images.astype(np.float32).copy())
    got = jax.jit(preprocess_input)(images)  # uint8 in, converted on the device
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)


def test_channel_order_is_bgr_minus_bgr_mean():
    pixel = np.array([[[[10, 20, 30]]]], dtype=np.uint8)  # R, G, B
    got = np.asarray(preprocess_input(pixel))[0, 0, 0]
    np.testing.assert_allclose(got, [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-5)


def test_dtype_option():
    assert preprocess_input(np.zeros((1, 2, 2, 3), np.uint8), dtype=jnp.bfloat16).dtype == jnp.bfloat16
