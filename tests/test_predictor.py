"""`vgg_jax.load` and its Predictor on a small trained run: `vgg-jax predict`'s numbers on a folder of images of
several sizes, for every kind of input, without recompiling; exported files that stand alone; the factories on them.

The run resizes with "pad" and bilinear interpolation, not the defaults, so a Predictor that ignored the run's
options would give other numbers (checked below)."""

from __future__ import annotations

import csv
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image
from safetensors.numpy import save_file

import vgg_jax
from tests.conftest import SMALL
from vgg_jax import VGG11, VGG16
from vgg_jax.models import arch, params_io
from vgg_jax.models.classifier import Classifier
from vgg_jax.inference.classify import decode_predictions, imagenet_classes
from vgg_jax.train.config import TrainConfig
from vgg_jax.data import open_source
from vgg_jax.errors import UserError
from vgg_jax.inference.evaluate import predict
from vgg_jax.inference.export import export
from vgg_jax.data.image import load_image
from vgg_jax.models.vgg import VGG
from vgg_jax.inference.predictor import Predictor, load
from vgg_jax.models.preprocess import preprocess_input
from vgg_jax.train.step import probabilities
from vgg_jax.data.synthetic import draw, write_folder
from vgg_jax.train.trainer import train

pytestmark = pytest.mark.usefixtures("own_cache")  # conftest: a cache folder of this module's own

RESIZE = {"resize": "pad", "interpolation": "bilinear"}
# (height, width) of the pictures to predict: none is the run's 32x32, two share a size (for the array input).
SIZES = [(20, 30), (48, 40), (48, 40), (64, 64), (33, 97), (120, 50), (90, 31)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random small VGG11 params file with fc1/fc2, standing in for the ImageNet weights."""
    model = VGG(depths=arch.DEPTHS["vgg11"], widths=SMALL["widths"], fc_units=SMALL["fc_units"], classes=10)
    params = jax.jit(model.init)(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))["params"]
    path = tmp_path_factory.mktemp("weights") / "small.safetensors"
    params_io.save(path, jax.tree.map(np.asarray, params), {"architecture": "vgg11"})
    return path


@pytest.fixture(scope="module")
def run(weights, tmp_path_factory, cache):
    """One epoch of the recipe (frozen backbone, new sigmoid head) on a generated folder."""
    data = write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=12, valid=4, test=2, seed=3)
    out = tmp_path_factory.mktemp("runs") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(cache))
        train(TrainConfig(data=str(data), out=str(out), weights=str(weights), epochs=1, **RESIZE, **SMALL))
    return out


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of real JPEG and PNG files of several sizes (seed 5)."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(5)
    for i, hw in enumerate(SIZES, 1):
        Image.fromarray(draw(i % 2, rng, hw)).save(folder / f"{i}.{'png' if i % 3 == 0 else 'jpg'}")
    return folder


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(cache))
        return export(run, tmp_path_factory.mktemp("export") / "model.safetensors")


def test_predictor_equals_predict_csv(run, pictures, tmp_path):
    written = predict(run, str(pictures), str(tmp_path / "predictions.csv"))
    with open(written, newline="") as f:
        rows = list(csv.DictReader(f))
    predictor = load(run, batch_size=4)  # 7 pictures: two batches, the second padded
    probs = predictor.predict(pictures)
    assert [r["id"] for r in rows] == open_source(pictures, "test").ids
    assert predictor.classes == ["cats", "dogs"] and predictor.image_size == 32
    assert probs.dtype == np.float32 and probs.shape == (len(SIZES), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[:, 1], [float(r["label"]) for r in rows], rtol=0, atol=1e-5)
    # The comparison can fail: the default resize options give other numbers for these pictures.
    other = Predictor(predictor.model, predictor.params, predictor.classes, 32, "squash", "nearest", 4)
    assert np.abs(other.predict(pictures) - probs).max() > 1e-4


def test_three_kinds_of_input_agree(run, pictures):
    predictor = load(run, batch_size=4)
    paths = predictor.files(pictures)
    by_folder = predictor.predict(pictures)
    np.testing.assert_array_equal(predictor.predict(paths), by_folder)
    np.testing.assert_array_equal(predictor.predict(paths[2]), by_folder[2:3])
    arrays = [load_image(p, size=None) for p in paths]  # decoded, not resized: the Predictor resizes them
    for shape in sorted({a.shape for a in arrays}):
        rows = [i for i, a in enumerate(arrays) if a.shape == shape]
        got = predictor.predict(np.stack([arrays[i] for i in rows]))
        np.testing.assert_allclose(got, by_folder[rows], rtol=0, atol=1e-6, err_msg=f"images of shape {shape}")


def test_new_batch_counts_do_not_recompile(run):
    predictor = load(run, batch_size=4)
    images = np.random.default_rng(11).integers(0, 256, (9, 40, 50, 3), dtype=np.uint8)  # seed 11
    results = {n: predictor.predict(images[:n]) for n in (1, 3, 4, 5, 9)}
    assert predictor._probs._cache_size() == 1
    for n, probs in results.items():  # padding rows change nothing
        assert probs.shape == (n, 2)
        np.testing.assert_allclose(probs, results[9][:n], rtol=0, atol=1e-6, err_msg=f"{n} images")
    assert predictor.predict(images[:0]).shape == (0, 2)


def test_exported_file_stands_alone(run, weights, pictures, tmp_path):
    own_run, own_weights = tmp_path / "run", tmp_path / "weights.safetensors"
    shutil.copytree(run, own_run)
    shutil.copy(weights, own_weights)
    info = json.loads((own_run / "run.json").read_text())
    info["weights"]["path"] = str(own_weights)
    (own_run / "run.json").write_text(json.dumps(info))
    want = load(own_run).predict(pictures)
    model_file = export(own_run, tmp_path / "model.safetensors")
    shutil.rmtree(own_run)
    own_weights.unlink()
    predictor = load(model_file)
    assert predictor.classes == ["cats", "dogs"] and predictor.image_size == 32
    assert (predictor.resize, predictor.interpolation) == ("pad", "bilinear")
    np.testing.assert_allclose(predictor.predict(pictures), want, rtol=0, atol=1e-6)


def test_run_finds_its_weights_in_the_cache_by_sha256(run, weights, pictures, cache, tmp_path, capsys):
    own_run = tmp_path / "run"
    shutil.copytree(run, own_run)
    info = json.loads((own_run / "run.json").read_text())
    info["weights"]["path"] = str(tmp_path / "gone.safetensors")
    (own_run / "run.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="gone.safetensors"):
        load(own_run)
    cached = cache / "converted" / "moved.safetensors"
    cached.parent.mkdir(exist_ok=True)
    shutil.copy(weights, cached)
    try:
        got = load(own_run).predict(pictures)
    finally:
        cached.unlink()
    assert f"using {cached} from the cache (same sha256)" in capsys.readouterr().out
    np.testing.assert_allclose(got, load(run).predict(pictures), rtol=0, atol=1e-6)


def test_vgg_factory_builds_the_exported_classifier(run, exported, pictures):
    model, params = VGG11(weights=exported)
    assert isinstance(model, Classifier) and model.head_units == 1
    predictor = load(run)  # from the run folder: an independent way to the same network
    x = np.stack([load_image(p, 32, **RESIZE) for p in predictor.files(pictures)])
    logits = model.apply({"params": params}, preprocess_input(x))
    want = predictor.model.apply({"params": predictor.params}, preprocess_input(x))
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities(logits), predictor.predict(x), rtol=0, atol=1e-6)
    same, _ = VGG11(weights=exported, input_shape=(32, 32, 3))
    assert same == model


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_bad_inputs_get_one_line(run, exported, weights, tmp_path):
    predictor = load(run)
    text = tmp_path / "notes.txt"
    text.write_text("not an image, not a model")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    cases = [
        (lambda: load(tmp_path / "nothing"), "nothing: no such file or folder"),
        (lambda: load(tmp_path), "a folder without run.json"),
        (lambda: load(text), "notes.txt: not a readable safetensors params file .*vgg_jax.load takes a run folder"),
        (lambda: load(foreign), "foreign.safetensors: not a vgg-jax params file .*; vgg_jax.load takes a run folder"),
        (lambda: load(weights), "small.safetensors: a params file without a trained head"),
        (lambda: VGG16(weights=exported), "model.safetensors: holds vgg11 params, not vgg16"),
        (lambda: VGG11(weights=exported, input_shape=(64, 64, 3)), "a model for 32x32 images"),
        (lambda: VGG11(input_shape=(32, 48, 3)), r"input_shape must be \(size, size, 3\)"),
        (lambda: VGG11(input_shape=(32, 32, 1)), r"input_shape must be \(size, size, 3\)"),
        (lambda: predictor.predict(np.zeros((2, 32, 32, 3), np.float32)), "Received: float32 array of shape"),
        (lambda: predictor.predict(np.zeros((32, 32, 3), np.uint8)), r"shape \(32, 32, 3\)"),
        (lambda: predictor.predict([text]), "notes.txt: cannot decode image"),
        (lambda: predictor.predict(tmp_path / "absent.jpg"), "absent.jpg: no such image file or folder"),
        (lambda: decode_predictions(np.zeros((2, 10))), r"shape \[N, 1000\]. Received: shape \(2, 10\)"),
    ]
    for call, pattern in cases:
        with pytest.raises(UserError, match=pattern) as excinfo:
            call()
        print(one_line(excinfo))


def test_old_export_without_metadata_says_export_again(exported, tmp_path):
    old = tmp_path / "old.safetensors"
    meta = params_io.read_metadata(exported)
    params_io.save(old, params_io.load(exported), {k: meta[k] for k in ("architecture", "classes", "top")})
    with pytest.raises(UserError, match="metadata lacks head_units, image_size, .*export the run again") as excinfo:
        load(old)
    one_line(excinfo)


def test_decode_predictions_is_keras_shaped():
    preds = np.full((2, 1000), 1e-4, np.float32)
    preds[0, 281], preds[0, 207], preds[1, 0] = 0.7, 0.2, 0.9
    decoded = decode_predictions(preds, top=2)
    names = imagenet_classes()
    assert [d[:2] for d in decoded[0]] == [names[281], names[207]] and decoded[1][0][:2] == names[0]
    assert decoded[0][0][2] == pytest.approx(0.7) and len(decoded[1]) == 2


def test_package_surface():
    names = {"load", "Predictor", "VGG11", "VGG13", "VGG16", "VGG19", "preprocess_input", "decode_predictions",
             "load_image"}  # fmt: skip
    assert names <= set(dir(vgg_jax))
    assert vgg_jax.load is load and vgg_jax.Predictor is Predictor and vgg_jax.load_image is load_image


def test_inference_restores_the_params_alone_and_builds_no_optimizer(run, monkeypatch):
    """load_run reads the trained params by orbax's partial restore: they equal the full state's params, and
    no optimizer is built (make_optimizer would raise) nor optimizer state read."""
    from vgg_jax.train import optim
    from vgg_jax.train.checkpoint import Checkpoints
    from vgg_jax.inference.evaluate import load_run
    from vgg_jax.models.freeze import split
    from vgg_jax.models.weights import resolve_weights
    from vgg_jax.train.network import build_model, init_params
    from vgg_jax.train.step import create_state

    out = run
    cfg = TrainConfig.from_json(json.loads((out / "run.json").read_text())["config"])
    trainable, _ = split(init_params(build_model(cfg, 2), cfg, resolve_weights(cfg.weights)), cfg.freeze_through)
    state_like = create_state(trainable, optim.make_optimizer(trainable), cfg.seed)
    checkpoints = Checkpoints(out / "checkpoints", cfg.keep_checkpoints)
    step, full_state, _ = checkpoints.restore_good(state_like, "best", say=pytest.fail)
    checkpoints.close()

    def refuse(*args, **kwargs):
        raise AssertionError("inference must not build an optimizer")

    for name in ("adam", "sgd"):  # whatever imports make_optimizer, building one calls these at call time
        monkeypatch.setattr(optax, name, refuse)
    params = load_run(out, which="best")[3]
    assert jax.tree.structure(params) == jax.tree.structure(full_state.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(full_state.params))
    assert vgg_jax.load(out).classes == ["cats", "dogs"]
