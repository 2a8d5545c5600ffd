"""Parity with real Keras: random-weight VGG16/VGG19 saved by Keras in every format it still writes,
converted by us, must give Keras' logits and no-top features (max relative error 1e-4, float32)."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import jax
import numpy as np
import pytest

from vgg_jax.convert import convert_file
from vgg_jax.models.parity import rel_error
from tests.keras_files import KerasReference, copy_weights
from vgg_jax import api, preprocess_input
from vgg_jax.models import arch
from vgg_jax.models.vgg import VGG

pytestmark = pytest.mark.slow  # full-size VGG16/VGG19 (224 px) and their Keras files

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
    """Converts `path` and compares our logits and no-top features with Keras'; returns the conversion report."""
    out = tmp_path / "params.safetensors"
    report = convert_file(path, out)
    assert (report.architecture, report.include_top) == (ref.name, include_top)
    if include_top:
        err = rel_error(ours(out, ref.name, True, images), ref.logits if want_logits is None else want_logits)
        assert err <= TOLERANCE, f"logits rel error {err:.2e}"
    err = rel_error(ours(out, ref.name, False, images), ref.features if want_features is None else want_features)
    assert err <= TOLERANCE, f"features rel error {err:.2e}"
    return report


@pytest.fixture(scope="module")
def vgg16_files(vgg16, tmp_path_factory) -> dict[str, Path]:
    """vgg16.full written once in each Keras 3 format (~550 MB each): {format: path}. Shared by the tests below:
    one that edits a file edits its own copy."""
    folder = tmp_path_factory.mktemp("vgg16_keras3")
    for filename, write in KERAS3_WRITERS.values():
        write(vgg16.full, str(folder / filename))
    return {fmt: folder / filename for fmt, (filename, _) in KERAS3_WRITERS.items()}


@pytest.mark.parametrize("fmt", list(KERAS3_WRITERS))
def test_vgg16_keras3_formats(vgg16, vgg16_files, fmt, tmp_path, images):
    check(vgg16, vgg16_files[fmt], tmp_path, images, include_top=True)


def test_vgg16_keras3_notop(vgg16, tmp_path, images):
    vgg16.notop.save_weights(str(tmp_path / "notop.weights.h5"))
    check(vgg16, tmp_path / "notop.weights.h5", tmp_path, images, include_top=False)


@pytest.fixture(scope="module")
def tf_keras_vgg16(vgg16, images):
    """vgg16 copied into a tf-keras VGG16 with its top, and tf-keras' own logits (and preprocessing) for `images`."""
    model, tf_keras = _tf_keras_model(vgg16, include_top=True)
    x = tf_keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    return model, model.predict(x, verbose=0)


@pytest.mark.parametrize("how", ["save_weights", "model.save"])
def test_vgg16_tf_keras_keras2_layout(vgg16, tf_keras_vgg16, how, tmp_path, images):
    """tf-keras writes the Keras 2 layout; compare against tf-keras' own outputs and preprocessing."""
    model, logits = tf_keras_vgg16
    path = str(tmp_path / "keras2.h5")
    model.save_weights(path) if how == "save_weights" else model.save(path)
    check(vgg16, path, tmp_path, images, include_top=True, want_logits=logits)


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


def _strip_names(f) -> None:
    """Deletes the `name` attribute Keras 3 writes on each layer's vars group (older Keras 3 did not)."""
    f.visititems(lambda name, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)


@pytest.mark.parametrize("fmt, names_from", [("keras3 .weights.h5", "order"), ("keras3 .keras", "config.json")])
def test_vgg16_keras3_without_name_attributes(vgg16, vgg16_files, fmt, names_from, tmp_path, images):
    """Without the per-layer `name` attributes a .weights.h5 is mapped by class and order (five 512->512 convs
    share one shape, so only the order tells them apart) and a .keras archive by its config.json."""
    import zipfile

    import h5py

    path = Path(shutil.copy(vgg16_files[fmt], tmp_path / KERAS3_WRITERS[fmt][0]))
    if fmt == "keras3 .keras":
        weights = tmp_path / "model.weights.h5"
        with zipfile.ZipFile(path) as zf:
            members = {name: zf.read(name) for name in zf.namelist()}
        weights.write_bytes(members.pop("model.weights.h5"))
        with h5py.File(weights, "r+") as f:
            _strip_names(f)
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
            zf.write(weights, "model.weights.h5")
    else:
        with h5py.File(path, "r+") as f:
            _strip_names(f)
    report = check(vgg16, path, tmp_path, images, include_top=True)
    assert report.names_from == names_from, str(report)


def test_vgg16_keras3_channels_first(vgg16, tmp_path, images):
    """A channels_first Keras 3 VGG16: HWIO kernels, and a Flatten(data_format='channels_first') that reorders
    to (h,w,c), which the .keras config records; Keras' own outputs on NCHW input are the reference."""
    import keras

    keras.config.set_image_data_format("channels_first")
    try:
        model = keras.applications.VGG16(weights=None, input_shape=(3, 224, 224), classifier_activation=None)
    finally:
        keras.config.set_image_data_format("channels_last")
    copy_weights(vgg16.full, model)
    nchw = images.astype(np.float32).transpose(0, 3, 1, 2)
    want = model.predict(keras.applications.vgg16.preprocess_input(nchw, data_format="channels_first"), verbose=0)
    model.save(str(tmp_path / "cf.keras"))
    report = check(vgg16, tmp_path / "cf.keras", tmp_path, images, include_top=True, want_logits=want)
    assert (report.fc1.value, report.fc1.source) == ("hwc", "recorded") and "channels_first" in report.format


@pytest.fixture(scope="module")
def keras20_channels_first(vgg16_files, tmp_path_factory):
    """A Keras 2.0-style channels_first model.save file: HWIO kernels (Keras 2 keeps them so in any data_format),
    a Flatten without data_format (added in Keras 2.1), so fc1 rows in (c,h,w) order. Written from Keras 3's
    legacy .h5 by editing its config and fc1 the way Keras 2.0 had them: the function is unchanged."""
    import json

    import h5py

    from vgg_jax.convert.legacy import fc1_to_chw

    path = tmp_path_factory.mktemp("keras20") / "keras20_cf.h5"
    shutil.copy(vgg16_files["keras3 legacy model.save .h5"], path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Flatten":
                del layer["config"]["data_format"]
            elif "data_format" in layer["config"]:
                layer["config"]["data_format"] = "channels_first"
        f.attrs["model_config"] = json.dumps(config)
        for group in (f, f["model_weights"]):
            group.attrs["keras_version"], group.attrs["backend"] = "2.0.8", "tensorflow"
        kernel = f["model_weights/fc1/fc1/kernel"]
        rows = fc1_to_chw(kernel[()])
        del f["model_weights/fc1/fc1/kernel"]
        f["model_weights/fc1/fc1/kernel"] = rows
    return path


def test_fc1_order_recorded_in_a_keras20_channels_first_file(vgg16, keras20_channels_first, tmp_path, images):
    report = check(vgg16, keras20_channels_first, tmp_path, images, include_top=True)
    assert (report.kernels.source, report.fc1.value, report.fc1.source) == ("recorded", "chw", "recorded"), str(report)
    assert "fc1 rows reordered (c,h,w) -> (h,w,c)" in report.transforms and "warning" not in str(report)


def test_fc1_order_inferred_without_a_config_is_flagged_and_overridable(
    vgg16, keras20_channels_first, tmp_path, images
):
    """Without its model config the same file's fc1 order can only be guessed from the (H,W,I,O) kernels: the
    guess (h,w,c) is wrong here, the report says it guessed, `--check` cannot tell (it checks the transforms
    for the conventions taken), and fc1_order="chw" fixes it."""
    import h5py

    from vgg_jax.models import parity
    from vgg_jax.models import params_io

    no_config = Path(shutil.copy(keras20_channels_first, tmp_path / "keras20_cf.h5"))
    with h5py.File(no_config, "r+") as f:
        del f.attrs["model_config"]
    guessed = tmp_path / "guessed.safetensors"
    report = convert_file(no_config, guessed)
    assert (report.fc1.value, report.fc1.source) == ("hwc", "inferred")
    assert "warning       fc1 row order inferred" in str(report) and "`fc1_order=chw`" in str(report), str(report)
    assert rel_error(ours(guessed, "vgg16", True, images), vgg16.logits) > 1e-2
    assert all(row.ok for row in parity.check(no_config, params_io.load(guessed), images))
    fixed = tmp_path / "fixed.safetensors"
    assert convert_file(no_config, fixed, fc1_order="chw").fc1.source == "override"
    assert rel_error(ours(fixed, "vgg16", True, images), vgg16.logits) <= TOLERANCE
