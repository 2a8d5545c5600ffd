"""`vgg-jax classify`: the Keras pipeline (load_img nearest resize, caffe preprocessing, softmax) and class names."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vgg_jax.convert import legacy
from vgg_jax.models.parity import rel_error
from tests.keras_files import canonical_params
from vgg_jax.inference.classify import imagenet_classes, top_k
from vgg_jax.data.image import load_image


def test_class_names_are_keras_imagenet_index():
    names = imagenet_classes()
    assert len(names) == 1000 and len({w for w, _ in names}) == 1000
    assert (
        names[0] == ("n01440764", "tench")
        and names[281] == ("n02123045", "tabby")
        and names[207][1] == "golden_retriever"
    )


@pytest.mark.slow
def test_top5_matches_keras_on_a_real_jpeg(vgg16, tmp_path):
    """Same file, same weights: our top-5 classes and probabilities are Keras' own."""
    import keras

    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path, quality=90)
    softmax_model = keras.applications.VGG16(weights=None)
    softmax_model.set_weights(vgg16.full.get_weights())
    x = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 224)))[None]
    want = softmax_model.predict(keras.applications.vgg16.preprocess_input(x), verbose=0)[0]
    got = top_k(canonical_params(vgg16.full), "vgg16", load_image(path), k=5)
    index = {wnid: i for i, (wnid, _) in enumerate(imagenet_classes())}
    assert [index[w] for w, _, _ in got] == list(np.argsort(-want)[:5])
    assert rel_error([p for _, _, p in got], np.sort(want)[::-1][:5]) < 1e-4


@pytest.mark.slow
def test_cli_prints_named_top5_from_h5_and_params(tmp_path):
    params = legacy.random_params(seed=0)
    params["predictions"]["bias"][281] = 1e4  # make "tabby" the certain winner
    legacy.write_keras1(tmp_path / "vgg16_tf.h5", params, "tf")
    image = tmp_path / "cat.png"
    Image.fromarray(np.full((80, 120, 4), 200, np.uint8)).save(image)  # RGBA: alpha is dropped
    for weights in (tmp_path / "vgg16_tf.h5", tmp_path / "vgg16.safetensors"):
        if weights.suffix == ".safetensors":
            assert (
                subprocess.run(
                    [sys.executable, "-m", "vgg_jax.convert", str(tmp_path / "vgg16_tf.h5"), "-o", str(weights)]
                ).returncode
                == 0
            )
        result = subprocess.run(
            [sys.executable, "-m", "vgg_jax", "classify", str(image), "--weights", str(weights)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 6 and "1. tabby" in lines[1] and "n02123045" in lines[1] and "100.00%" in lines[1]


@pytest.mark.slow
def test_undecodable_image_is_a_one_line_error(tmp_path):
    bad = tmp_path / "cat.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    legacy.write_keras1(tmp_path / "w.h5", legacy.random_params(depths=(1, 1, 2, 2, 2), include_top=False), "tf")
    result = subprocess.run(
        [sys.executable, "-m", "vgg_jax", "classify", str(bad), "--weights", str(tmp_path / "w.h5")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and str(bad) in result.stderr, result.stderr
