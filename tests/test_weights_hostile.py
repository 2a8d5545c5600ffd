"""Hostile params files and feature caches: NaN/inf weights are named as damaged weights (never "try a lower --lr"),
non-floating tensors and non-JSON metadata are refused in one line, half-precision files load widened exactly,
and a foreign feature-cache file is caught by its checksum and recomputed. Crafted files are written with
safetensors' own writer, not ours."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import SMALL
from vgg_jax.models import arch, params_io
from vgg_jax.train import features
from vgg_jax.cli import main
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.data.synthetic import write_folder

WIDTHS = (8, 8, 16, 16, 16)
SMALL_ARGS = ["--arch", "vgg11", "--widths", "8,8,16,16,16", "--fc-units", "32", "--image-size", "32",
              "--batch-size", "8"]  # fmt: skip
SEED = 7


pytestmark = pytest.mark.usefixtures("own_cache")  # conftest: a cache folder of this module's own


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=8, valid=4, test=2, seed=1)


def small_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """Finite float32 arrays for every backbone and fc layer of the small VGG11, flat "fc1/kernel" keys."""
    rng = np.random.default_rng(seed)
    shapes = arch.param_shapes(arch.DEPTHS["vgg11"], widths=WIDTHS, fc_units=32, image_size=32, classes=10)
    return {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()}


def write(path, arrays: dict, metadata: dict | None = None):
    """A params file as a foreign tool would write it: safetensors.numpy.save_file, raw string metadata."""
    meta = {"format": params_io.FORMAT, "architecture": '"vgg11"'} if metadata is None else metadata
    save_file(arrays, str(path), metadata=meta)
    return path


def like(arrays: dict) -> dict:
    return params_io.unflatten({k: np.empty(v.shape, np.float32) for k, v in arrays.items()})


def refused(capsys, argv: list) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("vgg-jax: error: "), f"{argv}: rc {rc}, {err!r}"
    with capsys.disabled():  # shown with -s, kept out of the next readouterr
        print(f"{argv[0]} -> {lines[0]}")
    return lines[0]


def train_argv(folder, out, weights) -> list:
    return ["train", "--data", folder, "--out", out, "--weights", weights, *SMALL_ARGS]


def test_nan_weights_are_named_as_damaged_weights(capsys, folder, tmp_path):
    arrays = small_weights()
    rng = np.random.default_rng(SEED)
    flat = arrays["fc1/kernel"].reshape(-1)
    spots = rng.choice(flat.size, 3, replace=False)
    flat[spots] = [np.nan, np.inf, -np.inf]
    weights = write(tmp_path / "w.safetensors", arrays)
    out = tmp_path / "run"
    line = refused(capsys, train_argv(folder, out, weights))
    assert f"{weights}: fc1/kernel holds 3 non-finite values (NaN/inf)" in line, f"seed {SEED}: {line}"
    assert "lower --lr" not in line and "damaged" in line
    assert not out.exists()


def test_nan_weights_refused_when_classifying(capsys, folder, tmp_path):
    arrays = small_weights()
    arrays["block1_conv1/bias"][0] = np.nan
    weights = write(tmp_path / "w.safetensors", arrays)
    image = next((folder / "test1").iterdir())
    line = refused(capsys, ["classify", image, "--weights", weights])
    assert "block1_conv1/bias holds 1 non-finite values (NaN/inf)" in line


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.uint8], ids=["int64", "bool", "uint8"])
def test_non_floating_tensor_refused(capsys, folder, tmp_path, dtype):
    arrays = small_weights()
    arrays["block3_conv1/kernel"] = np.ones(arrays["block3_conv1/kernel"].shape, dtype)
    weights = write(tmp_path / "w.safetensors", arrays)
    out = tmp_path / "run"
    line = refused(capsys, train_argv(folder, out, weights))
    name = np.dtype(dtype).name
    assert f"{weights}: block3_conv1/kernel holds {name} values, not floating-point weights" in line
    assert not out.exists()


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64], ids=["float16", "bfloat16", "float64"])
def test_other_float_widths_load_as_float32(tmp_path, dtype):
    """Half precision is widened exactly (every float16/bfloat16 value is a float32 value); float64 is rounded."""
    arrays = {k: v.astype(dtype) for k, v in small_weights().items()}
    path = write(tmp_path / "w.safetensors", arrays)
    loaded = params_io.flatten(params_io.load(path, like=like(arrays)))
    for k, v in arrays.items():
        assert loaded[k].dtype == np.float32
        np.testing.assert_array_equal(loaded[k], v.astype(np.float32), err_msg=k)
    if dtype != np.float64:
        np.testing.assert_array_equal(loaded["fc1/kernel"].astype(dtype), arrays["fc1/kernel"])


def test_float64_beyond_float32_range_is_refused(tmp_path):
    arrays = small_weights()
    arrays["fc2/bias"] = arrays["fc2/bias"].astype(np.float64)
    arrays["fc2/bias"][:2] = 1e300
    path = write(tmp_path / "w.safetensors", arrays)
    with pytest.raises(UserError, match=r"fc2/bias holds 2 non-finite values \(NaN/inf\) once rounded to float32"):
        params_io.load(path)


@pytest.mark.parametrize("field", ["architecture", "source_sha256"])
def test_metadata_that_is_not_json(capsys, folder, tmp_path, field):
    meta = {"format": params_io.FORMAT, "architecture": '"vgg11"', field: "vgg11 {not json"}
    weights = write(tmp_path / "w.safetensors", small_weights(), meta)
    line = refused(capsys, train_argv(folder, tmp_path / "run", weights))
    assert f"{weights}: metadata field '{field}' is not valid JSON" in line
    image = next((folder / "test1").iterdir())
    line = refused(capsys, ["classify", image, "--weights", weights])
    assert f"metadata field '{field}' is not valid JSON" in line


@pytest.mark.parametrize("value", ["5", '["vgg11"]', '"resnet50"'])
def test_architecture_that_is_not_a_vgg_name(capsys, folder, tmp_path, value):
    weights = write(tmp_path / "w.safetensors", small_weights(), {"format": params_io.FORMAT, "architecture": value})
    line = refused(capsys, train_argv(folder, tmp_path / "run", weights))
    assert f"metadata field 'architecture' is {json.loads(value)!r}, not one of vgg11, vgg13, vgg16, vgg19" in line


def some_features(seed: int, count: int = 12, dim: int = 6) -> features.Features:
    rng = np.random.default_rng(seed)
    return features.Features(
        rng.normal(size=(count, dim)).astype(np.float32),
        rng.random(count) > 0.1,
        rng.integers(0, 2, count).astype(np.int32),
    )


def store(fields: dict, split: str, cached: features.Features) -> Path:
    """Writes `cached` through the cache's own writer (the identity as the network)."""
    batch = {"image": cached.features, "mask": cached.ok, "label": cached.labels}
    count, shape = len(cached.labels), cached.features.shape[1:]
    features.compute(fields, split, [batch], lambda x: x, count, shape, "float32")
    return features.features_dir(fields)


def test_feature_cache_round_trip_with_umask_mode():
    fields = {"weights": "a" * 64, "data": "x", "cut": "fc1"}
    stored = some_features(1)
    old = os.umask(0o027)
    try:
        d = store(fields, "train", stored)
    finally:
        os.umask(old)
    meta = json.loads((d / "train.json").read_text())
    assert meta["sha256"] == hashlib.sha256((d / "train.npy").read_bytes()).hexdigest()
    for name in ("train.npy", "train.json"):
        assert os.stat(d / name).st_mode & 0o777 == 0o640, name
    loaded = features.load(fields, "train", 12, say=pytest.fail)
    assert isinstance(loaded.features, np.memmap)  # mapped, not read whole
    for got, want in zip(loaded, stored):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("damage", ["foreign values", "foreign shape", "truncated", "no checksum"])
def test_foreign_feature_cache_is_recomputed(damage):
    fields = {"weights": "b" * 64, "data": damage, "cut": "fc1"}
    d = store(fields, "valid", some_features(2))
    npy, meta_file = d / "valid.npy", d / "valid.json"
    if damage == "foreign values":  # a valid array with the right shape, from another key
        np.save(npy, some_features(3).features)
    elif damage == "foreign shape":
        np.save(npy, some_features(3, dim=9).features)
    elif damage == "truncated":
        npy.write_bytes(npy.read_bytes()[:100])
    else:
        meta = json.loads(meta_file.read_text())
        del meta["sha256"]
        meta_file.write_text(json.dumps(meta))
    said = []
    assert features.load(fields, "valid", 12, say=said.append) is None
    assert len(said) == 1 and said[0].startswith(f"feature cache {d}/valid: damaged ("), said
    assert said[0].endswith("; recomputing"), said


def test_trainer_recomputes_a_foreign_feature_cache(capsys, folder, tmp_path, monkeypatch):
    """End to end: the recipe's feature cache is filled, one split's file is replaced by a valid-looking one with
    other values, and the next run says so, recomputes, and stores the right features again."""
    from vgg_jax.train.trainer import train

    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    params_io.save(weights, params_io.unflatten(small_weights()), {"architecture": "vgg11"})
    train(TrainConfig(data=str(folder), out=str(tmp_path / "a"), weights=str(weights), epochs=1, **SMALL))
    first = capsys.readouterr().out
    assert "feature cache: train backbone pass" in first, first
    (npy,) = (tmp_path / "cache").glob("features/*/train.npy")
    original = np.load(npy)
    np.save(npy, original[::-1])

    train(TrainConfig(data=str(folder), out=str(tmp_path / "b"), weights=str(weights), epochs=1, **SMALL))
    second = capsys.readouterr().out
    assert f"feature cache {npy.parent}/train: damaged (checksum mismatch); recomputing" in second, second
    assert "feature cache: train backbone pass" in second, second
    assert "feature cache: valid fc1 features from" in second, second  # the untouched split is reused
    np.testing.assert_array_equal(np.load(npy), original)
