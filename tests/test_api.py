"""The Keras-shaped factories load params files without a random init and refuse mismatches clearly."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SMALL
from vgg_jax import VGG11, VGG16, UserError
from vgg_jax.convert import convert_file, legacy
from vgg_jax.models import arch, params_io
from vgg_jax.models.classifier import Classifier
from vgg_jax.models.weights import resolve_weights
from vgg_jax.train.config import TrainConfig
from vgg_jax.train.network import build_model, init_params


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


def _train_init(path, **fields):
    """The trainer's params for `path` (the command lines' wording of refusals)."""
    cfg = TrainConfig(data="unused", out="unused", weights=str(path), **fields)
    return init_params(build_model(cfg, 2), cfg, resolve_weights(cfg.weights, cfg.arch, cfg.top == "fc"))


def test_one_loader_words_an_architecture_mismatch_for_each_caller(vgg11_file):
    """The factories and the trainer share load_backbone; each names the choice in its own terms (a command line
    then words the trainer's settings as its flags)."""
    path, _ = vgg11_file
    with pytest.raises(UserError, match=r"holds vgg11 params, not vgg16$"):
        VGG16(weights=path)
    with pytest.raises(UserError, match=r"holds vgg11 params, but `arch` is vgg16$"):
        _train_init(path, arch="vgg16")


def test_one_loader_words_a_no_top_file_for_each_caller(tmp_path):
    """A file without fc1/fc2/predictions (refused before any shape is read, so tiny arrays do)."""
    notop = tmp_path / "notop.safetensors"
    names = {k.split("/")[0] for k in arch.param_shapes(arch.DEPTHS["vgg11"], include_top=False)}
    params_io.save(notop, {n: {"kernel": np.zeros(1), "bias": np.zeros(1)} for n in names}, {"architecture": "vgg11"})
    with pytest.raises(UserError, match="it is a no-top file; use include_top=False or the full weights file$"):
        VGG11(weights=notop)
    with pytest.raises(UserError, match="it is a no-top file; `top=fc` needs fc1/fc2: use the full file or `top=avg`$"):
        _train_init(notop, arch="vgg11")


def test_one_imagenet_resolution_words_refusals_for_each_caller(tmp_path, monkeypatch):
    """Another architecture, then a failed download: the settings' wording adds what to pass instead."""
    with pytest.raises(UserError, match=r"^weights='imagenet': Keras publishes .* not vgg11$"):
        VGG11(weights="imagenet")
    with pytest.raises(UserError, match=r"^`weights=imagenet`: .* not vgg11; pass `weights=random` or a params file$"):
        resolve_weights("imagenet", "vgg11")
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("VGG_JAX_WEIGHTS_BASE_URL", "http://127.0.0.1:9/")
    with pytest.raises(UserError) as library:
        VGG16(weights="imagenet")
    with pytest.raises(UserError) as settings:
        resolve_weights("imagenet", "vgg16")
    assert str(settings.value) == f"{library.value}; or train a random backbone with `weights=random`"


def test_an_export_with_the_flat_keras_names_loads(tmp_path):
    """A `vgg-jax export` file as every version wrote it (flat Keras names plus `head`, from the converter's
    table, not from the module) loads into the Classifier array for array."""
    shapes = arch.param_shapes(
        arch.DEPTHS["vgg11"], widths=SMALL["widths"], fc_units=SMALL["fc_units"], image_size=SMALL["image_size"]
    )
    shapes = {k: v for k, v in shapes.items() if not k.startswith("predictions/")}
    shapes |= {"head/kernel": (SMALL["fc_units"], 1), "head/bias": (1,)}
    rng = np.random.default_rng(5)
    flat = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    meta = {"architecture": "vgg11", "classes": ["cats", "dogs"], "head_units": 1, "image_size": SMALL["image_size"],
            "resize": "squash", "interpolation": "nearest", "top": "fc", "dtype": "float32",
            "widths": list(SMALL["widths"]), "fc_units": SMALL["fc_units"]}  # fmt: skip
    path = tmp_path / "export.safetensors"
    params_io.save(path, params_io.unflatten(flat), meta)
    model, params = VGG11(weights=path)
    assert isinstance(model, Classifier)
    got = params_io.flatten(params)
    assert set(got) == set(flat)
    for k, want in flat.items():
        np.testing.assert_array_equal(np.asarray(got[k]), want)
    size = SMALL["image_size"]
    assert model.apply({"params": params}, np.zeros((1, size, size, 3), np.float32)).shape == (1, 1)
