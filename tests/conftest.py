"""Shared fixtures. Keras runs on its JAX backend; tensorflow stays quiet and off any GPU."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """Two random uint8 RGB images at 224x224, the size the ImageNet top needs."""
    return np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)


def rel_error(got, want) -> float:
    """max |got - want| / max |want|: the normwise relative error every parity test bounds."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="session")
def vgg16(images):
    """Keras 3 VGG16 with random weights and its logits/features (built once: about 10 s)."""
    from tests.keras_files import KerasReference

    return KerasReference("vgg16", 1, images)


@pytest.fixture(scope="session")
def vgg19(images):
    from tests.keras_files import KerasReference

    return KerasReference("vgg19", 2, images)
