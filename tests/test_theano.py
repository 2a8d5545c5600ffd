"""Theano-convention files (Keras 0.x gist layout, Keras 1 th_dim_ordering_th_kernels): no installable
Keras writes them, so the tests write them from Keras weights following REFERENCE.md, and prove the
flip direction independently against scipy's true convolution in float64."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from vgg_jax.convert import convert_file, legacy, load_keras
from vgg_jax.convert.mapping import fc1_rows_chw_to_hwc, oihw_to_hwio, rotate_180
from vgg_jax.models.parity import rel_error
from vgg_jax.convert.source import open_source
from tests.keras_files import canonical_params
from tests.test_parity_keras import ours
from vgg_jax.models import arch
from vgg_jax.convert import reference


def theano_conv_scipy(x_chw: np.ndarray, w_oihw: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What Theano's conv2d computes (true convolution, 'same' for 3x3), by scipy in float64."""
    return np.stack(
        [
            sum(signal.convolve2d(x_chw[i], w_oihw[o, i], mode="same") for i in range(x_chw.shape[0])) + b[o]
            for o in range(w_oihw.shape[0])
        ]
    )


@pytest.fixture
def small_theano_layer():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 7))  # C, H, W: odd, non-square, so a transposed spatial axis shows
    w = rng.normal(size=(4, 2, 3, 3))  # O, I, 3, 3: asymmetric, so a missing flip shows
    b = rng.normal(size=4)
    return x, w, b


def test_flip_direction_against_scipy(small_theano_layer):
    x, w, b = small_theano_layer
    want = theano_conv_scipy(x, w, b).transpose(1, 2, 0)  # -> HWC
    conv = nn.Conv(4, (3, 3), padding="SAME")
    flipped = {"kernel": jnp.asarray(rotate_180(oihw_to_hwio(w)), jnp.float32), "bias": jnp.asarray(b, jnp.float32)}
    got = conv.apply({"params": flipped}, jnp.asarray(x.transpose(1, 2, 0)[None], jnp.float32))[0]
    assert rel_error(got, want) < 1e-6
    # Without the flip the same layer is far off: the check can fail.
    unflipped = {**flipped, "kernel": jnp.asarray(oihw_to_hwio(w), jnp.float32)}
    assert (
        rel_error(conv.apply({"params": unflipped}, jnp.asarray(x.transpose(1, 2, 0)[None], jnp.float32))[0], want)
        > 0.1
    )


def test_reference_true_convolution_matches_scipy(small_theano_layer):
    """The float64 yardstick used by the demo and below agrees with scipy's true convolution."""
    x, w, b = small_theano_layer
    got = reference.conv3x3_same(x.transpose(1, 2, 0)[None], lambda ky, kx: w[:, :, ky, kx].T, b, true_convolution=True)
    assert rel_error(got[0], theano_conv_scipy(x, w, b).transpose(1, 2, 0)) < 1e-12


def test_fc1_row_reorder_matches_channels_first_flatten():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(2, 7, 7, 5))  # NHWC block5_pool of a tiny 5-channel net
    w_chw = rng.normal(size=(7 * 7 * 5, 3))  # rows in Theano's (c, h, w) order
    want = features.transpose(0, 3, 1, 2).reshape(2, -1) @ w_chw
    got = features.reshape(2, -1) @ fc1_rows_chw_to_hwc(w_chw)
    assert rel_error(got, want) < 1e-12
    assert rel_error(features.reshape(2, -1) @ w_chw, want) > 0.1


THEANO_WRITERS = {"Keras 0.x": legacy.write_keras0, "Keras 1": lambda p, params: legacy.write_keras1(p, params, "th")}


@pytest.fixture(scope="module")
def theano_files(vgg16, tmp_path_factory) -> dict:
    """vgg16.full's weights written once in each Theano layout (~550 MB each): {format: path}, read-only."""
    folder = tmp_path_factory.mktemp("theano")
    files = {fmt: folder / f"vgg16_th_{i}.h5" for i, fmt in enumerate(THEANO_WRITERS)}
    for fmt, write in THEANO_WRITERS.items():
        write(files[fmt], canonical_params(vgg16.full))
    return files


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(THEANO_WRITERS), ids=["keras0-gist", "keras1-th-dim-ordering-th-kernels"])
def test_theano_files_match_keras(vgg16, images, theano_files, tmp_path, fmt):
    report = convert_file(theano_files[fmt], tmp_path / "out.safetensors")
    assert report.format.startswith(fmt) and report.kernels.value == "theano"
    assert any("180" in t for t in report.transforms) and any("fc1 rows" in t for t in report.transforms)
    err = rel_error(ours(tmp_path / "out.safetensors", "vgg16", True, images), vgg16.logits)
    assert err <= 1e-4, f"logits rel error {err:.2e}"


@pytest.mark.slow
def test_keras1_tf_file_needs_no_transform(vgg16, images, tmp_path):
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    legacy.write_keras1(path, canonical_params(vgg16.full), "tf")
    params, report = load_keras(path)
    assert report.format.startswith("Keras 1") and report.transforms == []
    for name, layer in canonical_params(vgg16.full).items():
        np.testing.assert_array_equal(params[name]["kernel"], layer["kernel"])


@pytest.mark.slow
def test_kernels_override_changes_the_result(vgg16, images, theano_files, tmp_path):
    """--kernels tf on a Theano file skips the flip: the numbers go wrong, proving the flip matters at full size."""
    report = convert_file(theano_files["Keras 0.x"], tmp_path / "wrong.safetensors", kernels="tf")
    assert report.kernels.source == "override"
    assert rel_error(ours(tmp_path / "wrong.safetensors", "vgg16", True, images), vgg16.logits) > 1e-2


@pytest.mark.slow
def test_float64_reference_in_both_conventions(vgg16, theano_files):
    """The numpy reference, run on the Theano file's raw arrays (true convolution, NCHW flatten) and on
    Keras' own arrays, agrees with Keras: an independent check of the whole Theano mapping."""
    small = np.random.default_rng(5).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    want = vgg16.full.predict(reference.preprocess(small).astype(np.float32), verbose=0)
    with open_source(theano_files["Keras 0.x"]) as source:
        layers = [(l.read(0), l.read(1)) for l in source.layers]
    th = reference.forward(layers[:13], layers[13:], arch.DEPTHS["vgg16"], small, "oihw", true_convolution=True)
    tf_layers = [(v["kernel"], v["bias"]) for v in canonical_params(vgg16.full).values()]
    tf = reference.forward(tf_layers[:13], tf_layers[13:], arch.DEPTHS["vgg16"], small)
    assert rel_error(th, tf) < 1e-10
    assert rel_error(tf, want) < 1e-4


@pytest.mark.slow
def test_convert_check_flag_runs_parity(tmp_path):
    """`vgg-jax convert --check` on a Theano-layout VGG11 file: both outputs within tolerance, exit 0."""
    import subprocess
    import sys

    src = tmp_path / "vgg11_th.h5"
    legacy.write_keras1(src, legacy.random_params(depths=arch.DEPTHS["vgg11"], seed=2), "th")
    cmd = [sys.executable, "-m", "vgg_jax", "convert", str(src), "-o", str(tmp_path / "o.safetensors"), "--check"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("   ok") == 2 and "VGG11" in result.stdout
