"""Parity with real Keras: random-weight VGG16/VGG19 saved by Keras in every format it still writes,
converted by us, must give Keras' logits and no-top features (max relative error 1e-4, float32)."""

from __future__ import annotations

from functools import cache

import jax
import numpy as np
import pytest

from convert import convert_file
from tests.conftest import rel_error
from tests.keras_files import KerasReference, copy_weights
from vgg_jax import api, arch, preprocess_input
from vgg_jax.model import VGG

TOLERANCE = 1e-4


@cache
def _apply(name: str, include_top: bool):
    model = VGG(depths=arch.DEPTHS[name], include_top=include_top, classifier_activation=None)
    return jax.jit(lambda params, images: model.apply({"params": params}, preprocess_input(images)))


def ours(path, name: str, include_top: bool, images: np.ndarray) -> np.ndarray:
    """Our model's output for a converted file, loaded through the public factory."""
    _, params = api.build(name, weights=path, include_top=include_top, classifier_activation=None)
    return np.asarray(_apply(name, include_top)(params, images))


def _tf_keras_model(ref: KerasReference, include_top: bool):
    import tf_keras

    factory = {"vgg16": tf_keras.applications.VGG16, "vgg19": tf_keras.applications.VGG19}[ref.name]
    model = factory(weights=None, include_top=include_top, **({"classifier_activation": None} if include_top else {}))
    copy_weights(ref.full, model)
    return model, tf_keras


KERAS3_WRITERS = {
    "keras3 .weights.h5": ("model.weights.h5", lambda m, p: m.save_weights(p)),
    "keras3 .keras": ("model.keras", lambda m, p: m.save(p)),
    "keras3 legacy model.save .h5": ("model.h5", lambda m, p: m.save(p)),
}


def check(ref: KerasReference, path, tmp_path, images, include_top: bool, want_logits=None, want_features=None):
    out = tmp_path / "params.safetensors"
    report = convert_file(path, out)
    assert (report.architecture, report.include_top) == (ref.name, include_top)
    if include_top:
        err = rel_error(ours(out, ref.name, True, images), ref.logits if want_logits is None else want_logits)
        assert err <= TOLERANCE, f"logits rel error {err:.2e}"
    err = rel_error(ours(out, ref.name, False, images), ref.features if want_features is None else want_features)
    assert err <= TOLERANCE, f"features rel error {err:.2e}"


@pytest.mark.parametrize("fmt", list(KERAS3_WRITERS))
def test_vgg16_keras3_formats(vgg16, fmt, tmp_path, images):
    filename, write = KERAS3_WRITERS[fmt]
    write(vgg16.full, str(tmp_path / filename))
    check(vgg16, tmp_path / filename, tmp_path, images, include_top=True)


def test_vgg16_keras3_notop(vgg16, tmp_path, images):
    vgg16.notop.save_weights(str(tmp_path / "notop.weights.h5"))
    check(vgg16, tmp_path / "notop.weights.h5", tmp_path, images, include_top=False)


@pytest.mark.parametrize("how", ["save_weights", "model.save"])
def test_vgg16_tf_keras_keras2_layout(vgg16, how, tmp_path, images):
    """tf-keras writes the Keras 2 layout; compare against tf-keras' own outputs and preprocessing."""
    model, tf_keras = _tf_keras_model(vgg16, include_top=True)
    path = str(tmp_path / "keras2.h5")
    model.save_weights(path) if how == "save_weights" else model.save(path)
    x = tf_keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    check(vgg16, path, tmp_path, images, include_top=True, want_logits=model.predict(x, verbose=0))


def test_vgg16_tf_keras_notop(vgg16, tmp_path, images):
    model, tf_keras = _tf_keras_model(vgg16, include_top=False)
    model.save_weights(str(tmp_path / "notop.h5"))
    x = tf_keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    check(vgg16, tmp_path / "notop.h5", tmp_path, images, include_top=False, want_features=model.predict(x, verbose=0))


@pytest.mark.parametrize("fmt", ["keras3 .keras", "keras3 legacy model.save .h5"])
def test_vgg19(vgg19, fmt, tmp_path, images):
    filename, write = KERAS3_WRITERS[fmt]
    write(vgg19.full, str(tmp_path / filename))
    check(vgg19, tmp_path / filename, tmp_path, images, include_top=True)


def test_vgg19_tf_keras_and_notop(vgg19, tmp_path, images):
    model, _ = _tf_keras_model(vgg19, include_top=True)
    model.save_weights(str(tmp_path / "keras2.h5"))
    check(vgg19, tmp_path / "keras2.h5", tmp_path, images, include_top=True)
    vgg19.notop.save_weights(str(tmp_path / "notop.weights.h5"))
    check(vgg19, tmp_path / "notop.weights.h5", tmp_path, images, include_top=False)
