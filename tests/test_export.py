"""`vgg-jax export` to Keras 3 (.keras, .weights.h5), jax.export (StableHLO) and a TF SavedModel: each artifact,
read back by the real library in a process that cannot import vgg_jax, gives `vgg_jax.load(run).predict`'s
probabilities within 1e-4 on the same uint8 images, for the fc, avg (three classes: softmax) and mlp:16 tops of
small trained runs. Bad inputs get one line each, before the checkpoint is loaded, and leave no file behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import vgg_jax
from tests.conftest import SMALL
from tests.test_args import refused
from vgg_jax.train.config import TrainConfig
from vgg_jax.inference.export import export, sidecar_path
from vgg_jax.data.synthetic import write_folder
from vgg_jax.train.trainer import train

pytestmark = pytest.mark.usefixtures("own_cache")  # conftest: a cache folder of this module's own

TOPS = {"fc": 2, "avg": 3, "mlp:16": 2}  # top -> classes; avg with three classes checks the softmax head
FILES = ("m.keras", "m.weights.h5", "m.jaxexport")
SEED = 11  # the images compared
TOL = 1e-4
NAMES = {"params": "m.safetensors", "keras": "m.keras", "weights.h5": "m.weights.h5", "stablehlo": "m.jaxexport",
         "savedmodel": "saved"}  # fmt: skip

# Runs in a fresh interpreter where `import vgg_jax` fails: reads every export with keras / jax alone.
READ_BACK = textwrap.dedent("""
    import os, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in sys.argv[2].split(","):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    import jax, keras, numpy as np
    images = np.load(sys.argv[1])
    def prep():
        return keras.applications.vgg16.preprocess_input(images.astype("float32"))  # it edits floats in place
    for folder in sys.argv[3:]:
        exp = jax.export.deserialize(open(os.path.join(folder, "m.jaxexport"), "rb").read())
        model = keras.saving.load_model(os.path.join(folder, "m.keras"))
        fresh = keras.models.clone_model(model)  # the architecture, new random weights
        before = np.asarray(fresh(prep()))
        fresh.load_weights(os.path.join(folder, "m.weights.h5"))
        np.savez(os.path.join(folder, "read_back.npz"), stablehlo=exp.call(images), stablehlo_1=exp.call(images[:1]),
                 keras=np.asarray(model(prep())), raw=np.asarray(model(images.astype("float32"))),
                 before=before, weights_h5=np.asarray(fresh(prep())))
""")


def add_class(root, name: str = "birds") -> None:
    """A third class: the cats pictures transposed (other bytes, same count)."""
    for split in ("train", "valid"):
        (root / split / name).mkdir()
        for f in sorted((root / split / "cats").iterdir()):
            Image.open(f).transpose(Image.Transpose.TRANSPOSE).save(root / split / name / f.name)


@pytest.fixture(scope="module")
def runs(small_weights_file, tmp_path_factory, cache):
    """One epoch of the recipe per top on conftest's small weights file (loading a run then compiles only the
    head's init, not the whole network's): {top: run folder}."""
    found = {}
    for top, classes in TOPS.items():
        data = write_folder(tmp_path_factory.mktemp("data") / "d", train=6, valid=3, test=0, seed=3)
        if classes == 3:
            add_class(data)
        out = tmp_path_factory.mktemp("runs") / top.replace(":", "_")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VGG_JAX_CACHE", str(cache))
            train(
                TrainConfig(data=str(data), out=str(out), weights=str(small_weights_file), epochs=1, top=top, **SMALL)
            )
        found[top] = out
    return found


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """uint8 images already at the runs' 32x32, so every reader sees the same pixels."""
    return np.random.default_rng(SEED).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exports(runs, pixels, tmp_path_factory, cache):
    """Every file format of every run, written under umask 022, then read back without vgg_jax:
    {top: (folder, our probabilities, {artifact: probabilities})}."""
    folders, ours = {}, {}
    old = os.umask(0o022)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VGG_JAX_CACHE", str(cache))
            for top, run in runs.items():
                folders[top] = tmp_path_factory.mktemp("export") / top.replace(":", "_")
                for name in FILES:
                    export(run, folders[top] / name)
                ours[top] = vgg_jax.load(run).predict(pixels)
    finally:
        os.umask(old)
    path = tmp_path_factory.mktemp("images") / "images.npy"
    np.save(path, pixels)
    read_back(path, "vgg_jax,tensorflow", *folders.values())  # Keras 3 on JAX needs neither
    return {top: (f, ours[top], dict(np.load(f / "read_back.npz"))) for top, f in folders.items()}


def python(script: str, *args, **env: str) -> subprocess.CompletedProcess:
    """Runs `script` in a fresh interpreter (cwd: a temp folder, so the repo is not on its path)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    argv = [sys.executable, "-c", script, *map(str, args)]
    return subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=os.path.dirname(str(args[0])))


def read_back(*args) -> None:
    done = python(READ_BACK, *args, KERAS_BACKEND="jax")
    assert done.returncode == 0, done.stderr[-3000:]


def two_columns(p: np.ndarray) -> np.ndarray:
    """Keras' sigmoid output P(class 1) [N, 1] as Predictor's [N, 2]; softmax output as it is."""
    return np.concatenate([1 - p, p], axis=1) if p.shape[1] == 1 else p


def max_diff(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max())


@pytest.mark.slow
@pytest.mark.parametrize("top", TOPS)
def test_stablehlo_matches_predictor(exports, top):
    _, ours, theirs = exports[top]
    assert ours.shape == (5, TOPS[top])
    assert max_diff(theirs["stablehlo"], ours) < TOL, (top, SEED, theirs["stablehlo"], ours)
    assert max_diff(theirs["stablehlo_1"], ours[:1]) < TOL, (top, SEED)  # another batch size, same file


@pytest.mark.slow
@pytest.mark.parametrize("top", TOPS)
def test_keras_matches_predictor(exports, top):
    _, ours, theirs = exports[top]
    assert max_diff(two_columns(theirs["keras"]), ours) < TOL, (top, SEED, theirs["keras"], ours)
    # The comparison can fail: without preprocess_input the same model gives other numbers.
    assert max_diff(two_columns(theirs["raw"]), ours) > TOL, (top, SEED, theirs["raw"], ours)


@pytest.mark.slow
@pytest.mark.parametrize("top", TOPS)
def test_weights_h5_loads_into_the_architecture(exports, top):
    _, ours, theirs = exports[top]
    assert max_diff(two_columns(theirs["weights_h5"]), ours) < TOL, (top, SEED)
    assert max_diff(two_columns(theirs["before"]), ours) > TOL, (top, SEED, "fresh weights gave our numbers")


@pytest.mark.slow
@pytest.mark.parametrize("top", TOPS)
def test_weights_h5_loads_into_the_sidecars_architecture(exports, pixels, top):
    """The README's other way to rebuild the architecture for a .weights.h5: vgg_jax's helper on the sidecar."""
    import keras

    from vgg_jax.inference.export_keras import build_keras_model

    folder, ours, _ = exports[top]
    model = build_keras_model(json.loads(sidecar_path(folder / "m.weights.h5").read_text()))
    model.load_weights(folder / "m.weights.h5")
    theirs = np.asarray(model(keras.applications.vgg16.preprocess_input(pixels.astype("float32"))))
    assert max_diff(two_columns(theirs), ours) < TOL, (top, SEED)


@pytest.mark.slow
def test_files_honour_the_umask_and_carry_a_sidecar(exports, runs):
    for top, (folder, _, _) in exports.items():
        for name in FILES:
            assert (folder / name).stat().st_mode & 0o777 == 0o644, (top, name)
            meta = json.loads(sidecar_path(folder / name).read_text())
            assert meta["image_size"] == 32 and meta["top"] == top and len(meta["classes"]) == TOPS[top], meta
        left = sorted(p.name for p in folder.iterdir())
        assert left == sorted([*FILES, *(f"{n}.json" for n in FILES), "read_back.npz"]), left


@pytest.mark.slow
def test_savedmodel_matches_predictor(runs, pixels, tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "saved"
    export(runs["fc"], out, fmt="savedmodel")
    ours = vgg_jax.load(runs["fc"]).predict(pixels)
    np.save(tmp_path / "images.npy", pixels)
    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "vgg_jax":
                    raise ImportError(name)
        sys.meta_path.insert(0, Block())
        import numpy as np, tensorflow as tf
        serve = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
        np.save(sys.argv[3], serve(images=tf.constant(np.load(sys.argv[1])))["probabilities"].numpy())
    """)
    done = python(script, tmp_path / "images.npy", out, tmp_path / "tf.npy", CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "tf.npy")
    assert max_diff(theirs, ours) < TOL, (SEED, theirs, ours)
    assert json.loads(sidecar_path(out).read_text())["classes"] == ["cats", "dogs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy", "saved", "saved.json", "tf.npy"]


@pytest.mark.parametrize("fmt", NAMES)
def test_no_checkpoint(capsys, runs, fmt, tmp_path):
    """A run folder whose checkpoints are gone (a run killed before its first one)."""
    run = shutil.copytree(runs["fc"], tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    line, _ = refused(capsys, ["export", run, "--format", fmt, "-o", tmp_path / "out" / NAMES[fmt]])
    assert line == f"vgg-jax: error: {run}: no usable checkpoint yet; train first (or resume the run)", line
    assert not (tmp_path / "out").exists()


def test_unknown_format(capsys, runs, tmp_path):
    line, out = refused(capsys, ["export", runs["fc"], "--format", "onnx", "-o", tmp_path / "m.onnx"])
    assert line == "vgg-jax: error: --format must be one of params, keras, weights.h5, stablehlo, savedmodel. " \
        "Received: 'onnx'"  # fmt: skip
    assert "checkpoint step" not in out


def test_keras_formats_need_their_suffix(capsys, runs, tmp_path):
    for fmt, name in (("keras", "m.h5"), ("weights.h5", "m.h5"), ("keras", ".keras")):
        line, out = refused(capsys, ["export", runs["fc"], "--format", fmt, "-o", tmp_path / name])
        assert str(tmp_path / name) in line and "must be named" in line and "checkpoint step" not in out, line
    assert not list(tmp_path.iterdir())


def test_unknown_suffix_without_format(capsys, runs, tmp_path):
    for name in ("m.onnx", "model", ".keras"):
        line, out = refused(capsys, ["export", runs["fc"], "-o", tmp_path / name])
        assert "--format" in line and str(tmp_path / name) in line, line
        assert "checkpoint step" not in out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["m.keras", "m.weights.h5", "m.jaxexport", "saved"])
def test_unwritable_output_before_loading(capsys, runs, readonly_dir, name):
    fmt = ["--format", "savedmodel"] if name == "saved" else []
    line, out = refused(capsys, ["export", runs["fc"], "-o", readonly_dir / name, *fmt])
    assert str(readonly_dir / name) in line and "read-only" in line, line
    assert "checkpoint step" not in out


@pytest.mark.parametrize("name", ["m.keras", "m.weights.h5", "m.jaxexport", "saved"])
def test_full_disk_leaves_nothing(capsys, runs, full_dir, name):
    """Room for the up-front probe, not for the file (over 64 KiB for every format here): one line, no temp file,
    no sidecar."""
    fmt = ["--format", "savedmodel"] if name == "saved" else []
    if fmt:
        pytest.importorskip("tensorflow")
    line, _ = refused(capsys, ["export", runs["fc"], "-o", full_dir / name, *fmt])
    assert "no space left on device" in line, line
    assert os.listdir(full_dir) == []


def test_existing_savedmodel_folder_is_refused(capsys, runs, tmp_path):
    (tmp_path / "saved").mkdir()
    line, out = refused(capsys, ["export", runs["fc"], "--format", "savedmodel", "-o", tmp_path / "saved"])
    assert "already exists" in line and "checkpoint step" not in out


@pytest.mark.slow
def test_missing_libraries_one_line(runs, tmp_path):
    """In a process where `import tensorflow` and `import keras` fail, as on a machine without them."""
    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras"):
                    raise ImportError(name)
        sys.meta_path.insert(0, Block())
        from vgg_jax.cli import main
        print(main(["export", sys.argv[1], "--format", sys.argv[2], "-o", sys.argv[3]]))
    """)
    for fmt, words in (("savedmodel", "pip install tensorflow"), ("keras", "pip install keras"),
                       ("weights.h5", "pip install keras")):  # fmt: skip
        target = tmp_path / NAMES[fmt]
        done = python(script, runs["fc"], fmt, target)
        lines = [x for x in done.stderr.splitlines() if x.startswith("vgg-jax")]
        assert done.stdout.strip() == "2" and len(lines) == 1 and words in lines[0], (fmt, done.stdout, done.stderr)
        assert "checkpoint step" not in done.stdout and not target.exists()
