"""`vgg-jax train` defaults to ImageNet weights: fetched from a real HTTP server on 127.0.0.1 (md5-checked,
converted, cached), one line before any data is listed when offline, and a random backbone only on request or
from a params file whose metadata says so, labelled RANDOM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vgg_jax.convert import download, legacy
from tests.test_download import Server, error_line, run_cli
from vgg_jax.models import arch, params_io
from vgg_jax.cli import main
from vgg_jax.data.synthetic import write_folder

NOTOP = download.OFFICIAL["vgg16-notop"]
SMALL_ARGS = ["--arch", "vgg11", "--widths", "8,8,16,16,16", "--fc-units", "32", "--image-size", "32",
              "--batch-size", "8"]  # fmt: skip
# Full-width VGG16 (the official file's shapes) on 32-pixel images with a pooled top: the no-top file suffices.
IMAGENET_ARGS = ["--top", "avg", "--image-size", "32", "--batch-size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=8, valid=4, test=3, seed=4)


@pytest.fixture(scope="module")
def notop_h5(tmp_path_factory):
    """A real Keras 1 no-top VGG16 weights file (h5py, the layout of the official release) with random weights."""
    path = tmp_path_factory.mktemp("keras") / NOTOP.filename
    legacy.write_keras1(path, legacy.random_params(include_top=False, seed=5))
    return path


@pytest.fixture
def mirror(tmp_path, monkeypatch, notop_h5):
    """The no-top file served at its official path, registered with its own md5; empty caches."""
    root = tmp_path / "mirror"
    (root / "vgg16").mkdir(parents=True)
    (root / NOTOP.path).symlink_to(notop_h5)
    monkeypatch.setitem(download.OFFICIAL, "vgg16-notop", download.Release(NOTOP.path, download.md5(notop_h5)))
    server = Server(root)
    monkeypatch.setenv("VGG_JAX_WEIGHTS_BASE_URL", server.url)
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    yield server
    server.close()


def test_default_weights_are_downloaded_converted_cached(mirror, folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(out), *IMAGENET_ARGS]) == 0
    assert main(["train", "--data", str(folder), "--out", str(out), *IMAGENET_ARGS, "--overwrite"]) == 0
    assert mirror.requests == 1, "the converted file must be reused"
    params = tmp_path / "cache" / "vgg16-notop.safetensors"
    assert json.loads((out / "run.json").read_text())["weights"]["path"] == str(params)
    weights_lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("weights: ")]
    assert weights_lines == [f"weights: {params} (sha256 {weights_lines[0].split('sha256 ')[1]}"] * 2, weights_lines
    assert "RANDOM" not in weights_lines[0]


def test_library_imagenet_weights_download_on_first_use(mirror, tmp_path):
    """`VGG16(weights="imagenet")` fetches, checks and converts the official file once, as Keras does."""
    import jax.numpy as jnp

    from vgg_jax import VGG16

    model, params = VGG16(weights="imagenet", include_top=False, pooling="avg", input_size=32)
    again = VGG16(weights="imagenet", include_top=False, pooling="avg", input_size=32)[1]
    assert mirror.requests == 1
    on_file = params_io.load(tmp_path / "cache" / "vgg16-notop.safetensors")
    np.testing.assert_array_equal(params["block5_conv3"]["kernel"], on_file["block5_conv3"]["kernel"])
    np.testing.assert_array_equal(again["block1_conv1"]["bias"], on_file["block1_conv1"]["bias"])
    assert model.apply({"params": params}, jnp.zeros((1, 32, 32, 3))).shape == (1, 512)


@pytest.mark.slow
def test_offline_default_weights_fail_in_one_line_before_the_data(tmp_path):
    """The data folder does not exist: had it been listed first, the error would name it instead."""
    out = tmp_path / "run"
    env = {"VGG_JAX_WEIGHTS_BASE_URL": "http://127.0.0.1:9/", "VGG_JAX_CACHE": str(tmp_path / "cache"),
           "KERAS_HOME": str(tmp_path / "keras_home")}  # fmt: skip  # port 9 (discard): connection refused
    result = run_cli("train", "--data", str(tmp_path / "no-such-data"), "--out", str(out), "--top", "fc", **env)
    line = error_line(result)
    target = tmp_path / "cache" / "keras" / download.OFFICIAL["vgg16"].filename
    url = "http://127.0.0.1:9/" + download.OFFICIAL["vgg16"].path
    assert line.startswith(f"vgg-jax: error: {url}: download failed"), line
    assert f"put it at {target}" in line and "--weights random" in line and "no-such-data" not in line, line
    assert not out.exists() and not any((tmp_path / "cache").rglob("*.h5*")), "nothing may be left behind"


def test_imagenet_for_an_architecture_keras_has_no_weights_for(capsys, folder, tmp_path):
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), *SMALL_ARGS]) == 2
    assert capsys.readouterr().err.splitlines() == [
        (
            "vgg-jax: error: --weights imagenet: Keras publishes ImageNet weights for vgg16 and vgg19 only, not vgg11; "
            "pass --weights random or a params file"
        )
    ]


@pytest.fixture(scope="module")
def random_params_file(tmp_path_factory):
    """A small-VGG params file whose metadata says its weights are random, as the demo writes it."""
    shapes = arch.param_shapes(arch.DEPTHS["vgg11"], widths=(8, 8, 16, 16, 16), fc_units=32, image_size=32)
    rng = np.random.default_rng(7)
    params: dict = {}
    for key, shape in shapes.items():
        layer, kind = key.split("/")
        params.setdefault(layer, {})[kind] = rng.normal(0, 0.1, shape).astype(np.float32)
    path = tmp_path_factory.mktemp("weights") / "random_vgg11.safetensors"
    params_io.save(path, params, {"architecture": "vgg11", "weights": "random"})
    return path


@pytest.fixture(scope="module")
def random_run(random_params_file, folder, tmp_path_factory, cache):
    """A one-epoch run on the random-labelled params file, and what train printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("runs") / "random"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("VGG_JAX_CACHE", str(cache))
        argv = ["train", "--data", folder, "--out", out, *SMALL_ARGS, "--weights", random_params_file, "--epochs", "1"]
        assert main([str(a) for a in argv]) == 0
    return out, printed.getvalue()


@pytest.mark.usefixtures("own_cache")
def test_train_labels_a_random_params_file(random_run, random_params_file):
    _, printed = random_run
    line = next(l for l in printed.splitlines() if l.startswith("weights: "))
    assert line.startswith(f"weights: {random_params_file} (RANDOM weights, sha256 "), line


@pytest.mark.usefixtures("own_cache")
def test_weights_random_is_a_random_backbone(capsys, folder, tmp_path):
    argv = ["train", "--data", str(folder), "--out", str(tmp_path / "run"), *SMALL_ARGS, "--weights", "random"]
    assert main(argv) == 0
    assert "weights: RANDOM backbone (no weights file)" in capsys.readouterr().out.splitlines()


@pytest.mark.usefixtures("own_cache")
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_other_commands_label_a_random_params_file(capsys, random_run, folder, tmp_path, command):
    out, _ = random_run
    argv = {"evaluate": ["evaluate", out], "predict": ["predict", out, folder / "test1", "--csv", tmp_path / "p.csv"],
            "export": ["export", out, "-o", tmp_path / "m.safetensors"]}[command]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    assert "RANDOM" in capsys.readouterr().out, command
