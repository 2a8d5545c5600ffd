"""The Keras-shaped factories load params files without a random init and refuse mismatches clearly."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_jax.convert import convert_file, legacy
from vgg_jax import VGG11, VGG16, UserError
from vgg_jax.models import params_io


@pytest.fixture(scope="module")
def vgg11_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("vgg11")
    params = legacy.random_params(depths=(1, 1, 2, 2, 2), seed=3)
    legacy.write_keras1(d / "vgg11.h5", params, "tf")
    convert_file(d / "vgg11.h5", d / "vgg11.safetensors")
    return d / "vgg11.safetensors", params


def test_loads_exact_arrays(vgg11_file):
    path, params = vgg11_file
    _, loaded = VGG11(weights=path, classifier_activation=None)
    np.testing.assert_array_equal(np.asarray(loaded["fc1"]["kernel"]), params["fc1"]["kernel"])
    assert params_io.read_metadata(path)["architecture"] == "vgg11"


def test_full_file_serves_no_top_model(vgg11_file):
    path, _ = vgg11_file
    model, loaded = VGG11(weights=path, include_top=False, pooling="avg")
    assert set(loaded) == {k for k in params_io.load(path) if k.startswith("block")}
    assert model.apply({"params": loaded}, np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 512)


def test_wrong_architecture_is_refused(vgg11_file):
    path, _ = vgg11_file
    with pytest.raises(UserError, match="holds vgg11 params, not vgg16"):
        VGG16(weights=path)


def test_classes_mismatch_names_the_layer(vgg11_file):
    path, _ = vgg11_file
    with pytest.raises(UserError, match=r"predictions/bias has shape \(1000,\), the model expects \(2,\)"):
        VGG11(weights=path, classes=2)


def test_imagenet_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    """Nothing cached and no network (port 9 refuses): one line with the URL and the path to put the file at."""
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("VGG_JAX_WEIGHTS_BASE_URL", "http://127.0.0.1:9/")
    with pytest.raises(UserError) as e:
        VGG16(weights="imagenet")
    line = str(e.value)
    assert line.startswith("http://127.0.0.1:9/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5: download failed")
    assert "put it at" in line and "\n" not in line, line


def test_imagenet_for_vgg11_is_refused():
    with pytest.raises(UserError, match="vgg16 and vgg19 only, not vgg11"):
        VGG11(weights="imagenet")


def test_not_a_params_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors params file"):
        VGG16(weights=bad)
