"""Importing fine-tuned Keras models: a VGG16 (32x32 inputs keep it cheap; the conv layers are full width) with a
new top and Dense head, written by real Keras 3 and tf-keras, converted by `vgg-jax convert`, must give Keras' own
probabilities through vgg_jax.load(...).predict within 1e-4; layers no vgg-jax top has get one line naming them;
the imported head starts a further training run when it fits, and a one-line note says why not when it does not."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
import pytest

import vgg_jax
from vgg_jax.convert import TopOptions, convert_file, load_keras
from vgg_jax.models import parity
from vgg_jax.models.parity import rel_error
from tests.keras_files import randomize
from vgg_jax.models import params_io
from vgg_jax.errors import UserError

SIZE = 32
TOLERANCE = 1e-4
SEED = 11  # weights of every model below; images use SEED + 1


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(SEED + 1).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)


def _base(keras):
    """VGG16 without its top at 32x32, random weights (seeded)."""
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    base.set_weights(_base_weights())
    return base


@cache
def _base_weights() -> list:
    """randomize's weights (seed SEED) for the no-top VGG16, drawn once for every _base."""
    import keras

    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    randomize(base, SEED)
    return base.get_weights()


def _finish(model, scale: float = 0.02, seed: int = SEED):
    """Random weights for the new layers too; the head scaled down so its probabilities are not all 0 or 1."""
    randomize(SimpleNamespace(layers=[layer for layer in model.layers if not hasattr(layer, "layers")]), seed)
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * scale, bias])
    return model


def fc_sigmoid():
    """VGG16 (fc1, fc2 kept) with predictions replaced by Dense(1, sigmoid): the recipe's model."""
    import keras

    full = keras.applications.VGG16(weights=None, include_top=True, input_shape=(SIZE, SIZE, 3))
    head = keras.layers.Dense(1, activation="sigmoid", name="dogs")(full.get_layer("fc2").output)
    return _finish(keras.Model(full.input, head))


def avg_softmax3():
    """Sequential: the no-top VGG16 as a nested model, GlobalAveragePooling2D, Dense(3, softmax)."""
    import keras

    layers = keras.layers
    return _finish(keras.Sequential([keras.Input((SIZE, SIZE, 3)), _base(keras), layers.GlobalAveragePooling2D(),
                                     layers.Dense(3, activation="softmax")]))  # fmt: skip


def mlp_sigmoid(keras):
    """The blog recipe, functional: VGG16 include_top=False, Flatten, Dense(16, relu), Dropout, Dense(1, sigmoid)."""
    layers = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Flatten()(_base(keras)(inputs))
    x = layers.Dropout(0.5)(layers.Dense(16, activation="relu")(x))
    return _finish(keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x)), scale=0.002)


def max_softmax2():
    """Sequential with the VGG layers inline, GlobalMaxPooling2D, Dense(2, softmax)."""
    import keras

    vgg = _base(keras).layers[1:]
    layers = keras.layers
    return _finish(
        keras.Sequential(
            [keras.Input((SIZE, SIZE, 3)), *vgg, layers.GlobalMaxPooling2D(), layers.Dense(2, activation="softmax")]
        )
    )


def keras_probs(model, images: np.ndarray) -> np.ndarray:
    import keras

    x = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    return np.asarray(model.predict(x, verbose=0), np.float64)


def check_parity(src: Path, out: Path, want: np.ndarray, images: np.ndarray, options: TopOptions | None = None):
    """Converts src and compares vgg_jax.load(out).predict with Keras' probabilities (a sigmoid head: P(class 1))."""
    report = convert_file(src, out, top=options)
    got = np.asarray(vgg_jax.load(out, batch_size=len(images)).predict(images), np.float64)
    ours = got[:, 1:] if want.shape[1] == 1 else got
    assert ours.shape == want.shape, (ours.shape, want.shape)
    assert np.any((want > 0.02) & (want < 0.98)), f"saturated probabilities prove little (seed {SEED}): {want}"
    err = float(np.max(np.abs(ours - want)))
    assert err <= TOLERANCE, f"{src.name}: max |ours - keras| {err:.2e} (seed {SEED})"
    return report


def test_fc_top_sigmoid_keras3(tmp_path, images):
    model = fc_sigmoid()
    model.save(tmp_path / "m.keras")
    report = check_parity(tmp_path / "m.keras", tmp_path / "m.safetensors", keras_probs(model, images), images,
                          TopOptions(classes=["cats", "dogs"]))  # fmt: skip
    assert (report.finetuned.top, report.finetuned.head_units, report.image_size) == ("fc", 1, SIZE)
    assert vgg_jax.load(tmp_path / "m.safetensors").classes == ["cats", "dogs"]
    module, params = vgg_jax.VGG16(weights=tmp_path / "m.safetensors")
    assert (module.top, params["fc1"]["kernel"].shape) == ("fc", (512, 4096))
    with pytest.raises(UserError, match="pass `image_size=32`"):  # train --weights m.safetensors at 224
        _train_init(tmp_path / "m.safetensors", "fc", ["cats", "dogs"], size=224)


def test_avg_softmax3_keras3_legacy_h5(tmp_path, images):
    model = avg_softmax3()
    model.save(tmp_path / "m.h5")
    report = check_parity(tmp_path / "m.h5", tmp_path / "m.safetensors", keras_probs(model, images), images)
    assert (report.finetuned.top, report.finetuned.head_units, report.finetuned.class_names) == (
        "avg",
        3,
        ["class_0", "class_1", "class_2"],
    )
    assert "`classes=NAME,NAME...`" in str(report)


def test_avg_weights_h5_needs_pooling(tmp_path, images):
    """A Keras 3 .weights.h5 has no model config: avg or max pooling cannot be told apart without --pooling."""
    model = avg_softmax3()
    model.save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(UserError, match="pass `pooling=avg` or `pooling=max`") as e:
        convert_file(tmp_path / "m.weights.h5", tmp_path / "x.safetensors")
    assert "\n" not in str(e.value) and not (tmp_path / "x.safetensors").exists()
    report = check_parity(tmp_path / "m.weights.h5", tmp_path / "m.safetensors", keras_probs(model, images), images,
                          TopOptions(pooling="avg", image_size=SIZE))  # fmt: skip
    assert any("no model config" in n for n in report.finetuned.notes), report.finetuned.notes
    assert report.finetuned.image_size_from == "`image_size`"


@pytest.mark.parametrize("writer", ["keras3 .keras", "tf-keras model.save .h5"])
def test_mlp_top_sigmoid(writer, tmp_path, images):
    import keras

    model = mlp_sigmoid(keras)
    want = keras_probs(model, images)
    if writer == "keras3 .keras":
        src = tmp_path / "m.keras"
        model.save(src)
    else:
        import tf_keras

        twin = mlp_sigmoid(tf_keras)
        twin.set_weights(model.get_weights())
        src = tmp_path / "m.h5"
        twin.save(src)
    report = check_parity(src, tmp_path / "m.safetensors", want, images)
    assert report.finetuned.top == "mlp:16"


def test_softmax2_becomes_one_sigmoid_unit(tmp_path, images):
    model = max_softmax2()
    model.save(tmp_path / "m.keras")
    report = check_parity(tmp_path / "m.keras", tmp_path / "m.safetensors", keras_probs(model, images), images)
    assert (report.finetuned.top, report.finetuned.head_units) == ("max", 1)
    assert any("2-unit softmax -> 1 sigmoid unit" in t for t in report.transforms), report.transforms
    rows = parity.check(tmp_path / "m.keras", params_io.load(tmp_path / "m.safetensors"), images)  # convert --check
    assert [r.output for r in rows] == ["block5_pool features", "head logits"] and all(r.ok for r in rows), rows


def test_plain_vgg16_with_top_at_32_pixels(tmp_path, images):
    """Not fine-tuned: VGG16's own fc1/fc2/predictions for 32x32 images (fc1 512 x 4096) convert, image size kept."""
    import keras

    full = keras.applications.VGG16(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    randomize(full, SEED)
    full.save_weights(tmp_path / "m.weights.h5")
    report = convert_file(tmp_path / "m.weights.h5", tmp_path / "m.safetensors")
    assert (report.finetuned, report.image_size, report.metadata["image_size"]) == (None, SIZE, SIZE)
    model, params = vgg_jax.VGG16(weights=tmp_path / "m.safetensors", input_size=SIZE, classifier_activation=None)
    got = np.asarray(model.apply({"params": params}, vgg_jax.preprocess_input(images)))
    want = np.asarray(full.predict(keras.applications.vgg16.preprocess_input(images.astype("float32")), verbose=0))
    assert rel_error(got, want) <= TOLERANCE, f"logits rel error {rel_error(got, want):.2e} (seed {SEED})"


def run_convert(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgg_jax", "convert", *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess, out_dir: Path, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("vgg-jax: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not list(out_dir.glob("*.safetensors*")), "output or temp file left behind"


def _small_top(keras, *top_layers):
    """The no-top VGG16, Flatten, then `top_layers`: for the models vgg-jax refuses."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Flatten()(_base(keras)(inputs))
    for layer in top_layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.slow
def test_unsupported_layers_get_one_line(tmp_path):
    import keras

    layers = keras.layers
    cases = {
        "bn.keras": (
            [
                layers.Dense(16, activation="relu"),
                layers.BatchNormalization(name="batch_normalization"),
                layers.Dense(1, activation="sigmoid"),
            ],
            ["layer 'batch_normalization' (BatchNormalization) after the VGG is not supported", "one Dense head"],
        ),
        "tanh.keras": (
            [layers.Dense(16, activation="tanh"), layers.Dense(1, activation="sigmoid")],
            ["(Dense, activation 'tanh')"],
        ),
        "multilabel.keras": (
            [layers.Dense(16, activation="relu"), layers.Dense(3, activation="sigmoid")],
            ["3 sigmoid units", "multi-label"],
        ),
    }
    out = tmp_path / "out"
    out.mkdir()
    for name, (top, needles) in cases.items():
        _small_top(keras, *top).save(tmp_path / name)
        assert_one_line(run_convert(tmp_path / name, "-o", out / "x.safetensors"), out, str(tmp_path / name), *needles)


@pytest.mark.slow
def test_dense_after_fc2_that_is_not_the_head(tmp_path):
    import keras

    full = keras.applications.VGG16(weights=None, include_top=True, input_shape=(SIZE, SIZE, 3))
    x = keras.layers.Dense(8, activation="relu", name="extra")(full.get_layer("fc2").output)
    keras.Model(full.input, keras.layers.Dense(1, activation="sigmoid")(x)).save(tmp_path / "m.h5")
    assert_one_line(run_convert(tmp_path / "m.h5", "-o", tmp_path / "x.safetensors"), tmp_path,
                    "layer 'extra' (Dense) after fc2 and before the head is not supported")  # fmt: skip


@pytest.mark.slow
def test_keras_model_without_a_vgg(tmp_path):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(8, 3, name="conv2d")(inputs))
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "m.keras")
    assert_one_line(run_convert(tmp_path / "m.keras", "-o", tmp_path / "x.safetensors"), tmp_path,
                    "a Keras model with no VGG inside (1 conv layer(s): conv2d)")  # fmt: skip


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """The blog recipe's model (mlp:16, sigmoid), imported with class names."""
    import keras

    folder = tmp_path_factory.mktemp("imported")
    mlp_sigmoid(keras).save(folder / "m.keras")
    convert_file(folder / "m.keras", folder / "m.safetensors", top=TopOptions(classes=["cats", "dogs"]))
    return folder / "m.safetensors"


def test_wrong_class_count_and_classify_refusal(imported, tmp_path, capsys):
    src = imported.with_name("m.keras")
    with pytest.raises(UserError, match="`classes` gives 3 name"):
        convert_file(src, tmp_path / "x.safetensors", top=TopOptions(classes=["a", "b", "c"]))
    with pytest.raises(UserError, match=r"a fine-tuned Keras model .* use vgg_jax.load"):
        load_keras(src)
    from vgg_jax.cli import main

    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    capsys.readouterr()
    assert main(["classify", str(picture), "--weights", str(imported)]) == 2  # the converted file: one line too
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a fine-tuned model (classes" in err and "vgg_jax.load" in err, err


def _train_init(weights: Path, top: str, classes: list[str], size: int = SIZE):
    from vgg_jax.train.config import TrainConfig
    from vgg_jax.models.weights import resolve_weights
    from vgg_jax.train.network import build_model, init_params

    cfg = TrainConfig(data="unused", out="unused", weights=str(weights), top=top, image_size=size, seed=3)
    return init_params(build_model(cfg, len(classes)), cfg, resolve_weights(cfg.weights), classes)


def test_training_starts_from_the_imported_head(imported, capsys):
    saved = params_io.load(imported)
    params = _train_init(imported, "mlp:16", ["cat", "dog"])
    for layer in ("head", "mlp1", "block5_conv3"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(params[layer][leaf]), saved[layer][leaf], err_msg=layer)
    said = capsys.readouterr().out
    assert "trained on classes cats, dogs; this data has cat, dog" in said, said
    assert "starting from the trained head, mlp1" in said, said


@pytest.mark.parametrize("top, classes", [("mlp:16", ["a", "b", "c"]), ("avg", ["cats", "dogs"])])
def test_a_head_that_does_not_fit_is_trained_fresh(imported, top, classes, capsys):
    saved = params_io.load(imported)
    params = _train_init(imported, top, classes)
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "does not fit this run" in said[0] and "a fresh head is trained" in said[0], said
    assert params["head"]["kernel"].shape != saved["head"]["kernel"].shape
    np.testing.assert_array_equal(np.asarray(params["block1_conv1"]["kernel"]), saved["block1_conv1"]["kernel"])
