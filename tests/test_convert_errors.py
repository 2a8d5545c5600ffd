"""Every conversion mistake in DESIGN.md's list: one line naming the file and the problem, exit status 2,
and no output file (nor temp file) left behind. Source files are written by real Keras."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from vgg_jax.convert.source import open_source

pytestmark = pytest.mark.slow  # `vgg-jax convert` in a child process, on full-size Keras VGG16/VGG19 files


def run_convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vgg_jax", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_clean_failure(result: subprocess.CompletedProcess, out_dir: Path, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("vgg-jax: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not list(out_dir.glob("*.safetensors*")), "output or temp file left behind"


@pytest.fixture(scope="module")
def notop_h5(vgg16, tmp_path_factory) -> Path:
    """A Keras-written (legacy model.save) VGG16 no-top file: 58 MB, named layers."""
    path = tmp_path_factory.mktemp("keras") / "vgg16_notop.h5"
    vgg16.notop.save(str(path))
    return path


@pytest.fixture
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_not_hdf5(tmp_path, out):
    src = tmp_path / "vgg16.h5"
    src.write_text("<html>404 Not Found</html>\n")
    assert_clean_failure(run_convert(src, "-o", out / "x.safetensors"), out, str(src), "not an HDF5 file")


def test_empty_file(tmp_path, out):
    src = tmp_path / "vgg16.h5"
    src.touch()
    assert_clean_failure(run_convert(src, "-o", out / "x.safetensors"), out, str(src), "empty file")


def test_truncated_hdf5(notop_h5, tmp_path, out):
    src = tmp_path / "truncated.h5"
    src.write_bytes(notop_h5.read_bytes()[: notop_h5.stat().st_size * 2 // 5])
    assert_clean_failure(run_convert(src, "-o", out / "x.safetensors"), out, str(src), "truncated")


def test_resnet50_file(tmp_path, out):
    import keras

    src = tmp_path / "resnet50.weights.h5"
    keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3)).save_weights(str(src))
    assert_clean_failure(
        run_convert(src, "-o", out / "x.safetensors"), out, str(src), "looks like a ResNet50", "not VGG"
    )


def test_vgg19_given_as_vgg16(vgg19, tmp_path, out):
    src = tmp_path / "vgg19_notop.weights.h5"
    vgg19.notop.save_weights(str(src))
    assert_clean_failure(
        run_convert(src, "--arch", "vgg16", "-o", out / "x.safetensors"), out, str(src), "looks like VGG19", "not VGG16"
    )


def test_missing_layer(notop_h5, tmp_path, out):
    src = tmp_path / "missing.h5"
    shutil.copy(notop_h5, src)
    with h5py.File(src, "r+") as f:
        g = f["model_weights"]
        del g["block3_conv2"]
        g.attrs["layer_names"] = np.array(
            [n for n in g.attrs["layer_names"] if n not in (b"block3_conv2", "block3_conv2")], dtype="S"
        )
    assert_clean_failure(
        run_convert(src, "-o", out / "x.safetensors"), out, str(src), "missing layer(s) block3_conv2", "VGG16"
    )


def test_missing_layer_in_keras0_file(vgg16, tmp_path, out):
    """Order-mapped files have no names to point at: the count tells."""
    from vgg_jax.convert import legacy
    from tests.keras_files import canonical_params

    params = {k: v for k, v in canonical_params(vgg16.notop).items() if k != "block4_conv3"}
    src = tmp_path / "vgg16_th_notop.h5"
    legacy.write_keras0(src, params)
    assert_clean_failure(
        run_convert(src, "--arch", "vgg16", "-o", out / "x.safetensors"),
        out,
        str(src),
        "12 conv layers",
        "VGG16 has 13",
    )


def test_wrong_shape(notop_h5, tmp_path, out):
    src = tmp_path / "wrong_shape.h5"
    shutil.copy(notop_h5, src)
    with h5py.File(src, "r+") as f:
        g = f["model_weights/block2_conv1/block2_conv1"]
        del g["kernel"]
        g["kernel"] = np.zeros((3, 3, 64, 100), np.float32)
    assert_clean_failure(
        run_convert(src, "-o", out / "x.safetensors"),
        out,
        str(src),
        "wrong shape in layer block2_conv1",
        "(3, 3, 64, 100)",
        "(3, 3, 64, 128)",
    )


def test_notop_file_where_top_is_needed(notop_h5, out):
    assert_clean_failure(
        run_convert(notop_h5, "--include-top", "-o", out / "x.safetensors"), out, str(notop_h5), "no-top file"
    )


def test_notop_params_in_classify(notop_h5, tmp_path, out):
    from PIL import Image

    params = out / "notop.safetensors"
    assert run_convert(notop_h5, "-o", params).returncode == 0
    image = tmp_path / "cat.png"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(image)
    result = subprocess.run(
        [sys.executable, "-m", "vgg_jax", "classify", str(image), "--weights", str(params)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "no-top" in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
        result.stderr
    )


def test_missing_source(tmp_path, out):
    assert_clean_failure(run_convert(tmp_path / "nope.h5", "-o", out / "x.safetensors"), out, "nope.h5", "no such file")


def test_open_source_reads_layers_lazily(notop_h5):
    with open_source(notop_h5) as source:
        assert [l.name for l in source.layers][:2] == ["block1_conv1", "block1_conv2"]
        assert source.layers[0].shapes == [(3, 3, 3, 64), (64,)]
