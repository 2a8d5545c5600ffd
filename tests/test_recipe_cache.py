"""Recipe fidelity and the feature cache at every cut: dropout as Keras applied it (after frozen fc1/fc2 too),
cached training equal to training through the backbone at the fc1, block5_pool and block4_pool cuts, the MLP
top on block5_pool, a cache keyed by file contents, damaged entries recomputed, and a disk too small refused.
Small VGG11 variants on 32x32 generated JPEGs keep it fast."""

from __future__ import annotations

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL
from vgg_jax.train import features
from vgg_jax.models.classifier import Classifier
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.inference.evaluate import load_run
from vgg_jax.models.weights import resolve_weights
from vgg_jax.train.network import build_model, init_params
from vgg_jax.train.step import dropout_keys
from vgg_jax.data.synthetic import write_folder
from vgg_jax.train.trainer import train

TOL = dict(rtol=1e-4, atol=1e-6)  # cached vs through-backbone: the same masks, float32 reordering only


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=20, valid=8, test=0, seed=3)


@pytest.fixture(scope="module")
def weights(small_weights_file):
    """conftest's small vgg11 with its fc layers (random, seed 7): a stand-in for the ImageNet file."""
    return str(small_weights_file)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh feature cache per test: each test decides what is cached."""
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def recipe_run(folder, weights, tmp_path_factory):
    """The recipe's defaults (fc2 frozen, dropout 0.5) trained once on `folder`: (run folder, the feature cache it
    wrote). Tests copy the cache into their own before changing it."""
    root = tmp_path_factory.mktemp("recipe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(root / "cache"))
        train(cfg(folder, root / "run", weights=weights))
    return root / "run", root / "cache"


def cfg(folder, out, **changes) -> TrainConfig:
    return TrainConfig(data=str(folder), out=str(out), **{**SMALL, **changes})


def trained(run) -> dict:
    return jax.tree.map(np.asarray, load_run(run, which="latest")[3])


def run_json(run) -> dict:
    return json.loads((run / "run.json").read_text())


# --- dropout as Keras applied it ----------------------------------------------------------------------------


def head_input(model: Classifier, params: dict, x: jax.Array, train: bool, keys) -> np.ndarray:
    """What `head` receives, recorded by a flax method interceptor (the network itself is unchanged)."""
    seen = []

    def spy(next_fun, args, kwargs, context):
        if context.module.name == "head" and context.method_name == "__call__":
            seen.append(np.asarray(args[0]))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        model.apply({"params": params}, x, train=train, dropout_keys=keys)
    return seen[0]


@pytest.mark.parametrize("rate", [0.5, 0.0])
def test_training_head_input_is_dropped_at_the_rate(rate):
    model = Classifier(depths=(1, 1, 1, 1, 1), widths=(8, 8, 8, 8, 8), fc_units=512, dropout_rate=rate)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    params["fc2"]["bias"] = params["fc2"]["bias"] + 5.0  # every fc2 output > 0: a zero can only be dropout
    keys = dropout_keys(jax.random.key_data(jax.random.key(1)), jnp.int32(0), 8)
    kept = head_input(model, params, x, False, None)
    dropped = head_input(model, params, x, True, keys)
    assert np.all(kept > 0)
    zeros = float(np.mean(dropped == 0))
    if rate == 0:
        assert zeros == 0 and np.array_equal(dropped, kept)
    else:
        assert 0.45 < zeros < 0.55, zeros  # 4096 draws: 0.5 +- 0.008 (1 sd)
        ratio = float(dropped.mean() / kept.mean())  # inverted dropout keeps the expectation
        assert 0.9 < ratio < 1.1, ratio


def test_masks_depend_on_step_and_row_only():
    keys = dropout_keys(jax.random.key_data(jax.random.key(3)), jnp.int32(5), 6)
    again = dropout_keys(jax.random.key_data(jax.random.key(3)), jnp.int32(5), 4)  # a smaller batch: same rows
    other_step = dropout_keys(jax.random.key_data(jax.random.key(3)), jnp.int32(6), 6)
    data = lambda k: np.asarray(jax.random.key_data(k))
    assert np.array_equal(data(keys)[:4], data(again))
    assert not np.array_equal(data(keys), data(other_step))
    assert len({tuple(row) for row in data(keys)}) == 6


def test_recipe_dropout_changes_training_of_the_head_alone(folder, weights, recipe_run, tmp_path, cache):
    """fc1 and fc2 are frozen in the recipe, yet their dropout acts: --dropout 0.5 and 0 train differently."""
    d5, _ = recipe_run  # the defaults: dropout 0.5
    train(cfg(folder, tmp_path / "d0", weights=weights, dropout=0.0))
    with_dropout, without = trained(d5), trained(tmp_path / "d0")
    assert sorted(with_dropout) == ["head"]
    diff = float(np.max(np.abs(with_dropout["head"]["kernel"] - without["head"]["kernel"])))
    assert diff > 1e-3, diff
    recorded = run_json(d5)
    assert recorded["dropout"] == {"rate": 0.5, "after": ["fc1", "fc2"], "in_training_even_if_frozen": True}
    assert recorded["feature_cache"]["cut"] == "fc1" and run_json(tmp_path / "d0")["feature_cache"]["cut"] == "fc2"


# --- the cache at every cut equals training through the backbone -----------------------------------------


CUTS = [("fc2", "fc1", {}), ("block5", "block5_pool", {}), ("block4", "block4_pool", {}),
        ("fc2", "block5_pool", {"top": "avg"}), ("fc2", "block5_pool", {"top": "mlp:24,16"})]  # fmt: skip


@pytest.mark.parametrize("freeze, cut, extra", CUTS, ids=[f"{c[0]}-{c[1]}-{c[2].get('top', 'fc')}" for c in CUTS])
def test_cached_training_equals_training_through_the_backbone(folder, weights, tmp_path, cache, capsys, freeze, cut,
                                                              extra):  # fmt: skip
    common = dict(weights=weights, freeze_through=freeze, epochs=2, **extra)  # 2 epochs x 5 steps, two orders
    train(cfg(folder, tmp_path / "cached", cache_features=True, **common))
    out = capsys.readouterr().out
    assert "train backbone pass over 40 images" in out and f"{cut} " in out, out
    train(cfg(folder, tmp_path / "direct", cache_features=False, **common))
    assert run_json(tmp_path / "cached")["feature_cache"]["cut"] == cut
    assert run_json(tmp_path / "direct")["feature_cache"]["cut"] is None
    a, b = trained(tmp_path / "cached"), trained(tmp_path / "direct")
    assert sorted(a) == sorted(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOL), a, b)
    start = jax.tree.map(np.asarray, init_params(build_model(cfg(folder, "x", **common), 2), cfg(folder, "x", **common),
                                                 resolve_weights(weights)))  # fmt: skip
    moved = max(float(np.max(np.abs(a[k]["kernel"] - start[k]["kernel"]))) for k in a)
    assert moved > 1e-4, f"{cut}: the params did not train ({moved})"


def test_mlp_top_builds_new_layers_and_shares_the_block5_cache(folder, weights, tmp_path, cache, capsys):
    train(cfg(folder, tmp_path / "avg", weights=weights, top="avg"))
    capsys.readouterr()
    train(cfg(folder, tmp_path / "mlp", weights=weights, top="mlp:24,16"))
    out = capsys.readouterr().out
    assert "train block5_pool features from" in out and "backbone pass" not in out, out
    params = trained(tmp_path / "mlp")
    assert sorted(params) == ["head", "mlp1", "mlp2"]
    assert params["mlp1"]["kernel"].shape == (16, 24) and params["mlp2"]["kernel"].shape == (24, 16)


@pytest.mark.parametrize("spec", ["mlp:abc", "mlp:", "mlp:0", "mlp:16,", "mlp", "dense:16"])
def test_malformed_top_is_one_line(folder, tmp_path, spec):
    with pytest.raises(UserError) as e:
        train(cfg(folder, tmp_path / "run", top=spec))
    assert str(e.value).startswith("top must be ") and repr(spec) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_bfloat16_cache_halves_the_file_and_trains(folder, weights, tmp_path, cache):
    train(cfg(folder, tmp_path / "f32", weights=weights, freeze_through="block4"))
    train(cfg(folder, tmp_path / "bf16", weights=weights, freeze_through="block4", cache_dtype="bfloat16"))
    stored = {json.loads(p.read_text())["dtype"]: np.load(p.with_suffix(".npy"), mmap_mode="r")
              for p in cache.glob("features/*/train.json")}  # fmt: skip
    assert set(stored) == {"float32", "bfloat16"}
    assert stored["bfloat16"].nbytes * 2 == stored["float32"].nbytes and stored["bfloat16"].dtype == np.uint16
    import ml_dtypes

    as_float = stored["bfloat16"].view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_allclose(as_float, stored["float32"], rtol=2**-8, atol=0)  # bfloat16 keeps 8 bits of mantissa
    assert not np.array_equal(as_float, stored["float32"])
    start = init_params(build_model(cfg(folder, "x"), 2), cfg(folder, "x", freeze_through="block4"),
                        resolve_weights(weights))  # fmt: skip
    moved = np.abs(trained(tmp_path / "bf16")["block5_conv1"]["kernel"] - np.asarray(start["block5_conv1"]["kernel"]))
    assert moved.max() > 1e-4


# --- a cache that is never stale, and never crashes ----------------------------------------------------------


def test_in_place_edit_with_same_size_and_mtime_invalidates(folder, weights, tmp_path, cache, capsys):
    data = write_folder(tmp_path / "data", train=6, valid=4, test=0, seed=9)
    train(cfg(data, tmp_path / "one", weights=weights))
    capsys.readouterr()
    victim = sorted((data / "train" / "cats").iterdir())[0]
    before = victim.stat()
    edited = tmp_path / "edited.jpg"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(edited, quality=50)
    payload = edited.read_bytes()
    assert len(payload) <= before.st_size
    victim.write_bytes(payload + b"\0" * (before.st_size - len(payload)))  # bytes after JPEG's EOI are ignored
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # what cp -p and rsync -a leave
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    train(cfg(data, tmp_path / "two", weights=weights))
    out = capsys.readouterr().out
    assert "train backbone pass" in out and "valid fc1 features from" in out, out


DAMAGE = {
    "truncated": lambda npy, meta: npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2]),
    "bit flip": lambda npy, meta: npy.write_bytes(npy.read_bytes()[:-1] + bytes([npy.read_bytes()[-1] ^ 1])),
    "wrong shape": lambda npy, meta: np.save(npy, np.zeros((3, 5), np.float32)),
    "missing": lambda npy, meta: npy.unlink(),
    "garbage metadata": lambda npy, meta: meta.write_text("{not json"),
    "not an npy": lambda npy, meta: npy.write_bytes(b"PK\x03\x04 a zip, not an array"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_is_recomputed_after_one_line(folder, weights, recipe_run, tmp_path, cache, capsys, damage):
    shutil.copytree(recipe_run[1], cache)  # the cache a first run of the recipe left
    (meta,) = cache.glob("features/*/train.json")
    DAMAGE[damage](meta.with_suffix(".npy"), meta)
    capsys.readouterr()
    train(cfg(folder, tmp_path / "two", weights=weights))
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if ": damaged (" in line]
    assert len(notes) == 1 and "recomputing" in notes[0] and "train" in notes[0], out
    assert "train backbone pass" in out and "valid fc1 features from" in out
    assert features.load(json.loads(meta.read_text())["fields"], "train", 40, say=pytest.fail) is not None


def test_disk_too_small_is_one_line_and_writes_nothing(folder, tmp_path, full_dir, monkeypatch):
    """block2_pool of 16x16x8 float32 for 56 images is 459 KB; the cache's file system has 64 KiB."""
    from vgg_jax.cli import main

    monkeypatch.setenv("VGG_JAX_CACHE", str(full_dir))
    monkeypatch.setenv("VGG_JAX_NO_COMPILATION_CACHE", "1")
    out = tmp_path / "run"
    args = ["train", "--data", str(folder), "--out", str(out), "--arch", "vgg11", "--widths", "8,8,16,16,16",
            "--fc-units", "32", "--image-size", "64", "--batch-size", "8", "--freeze-through", "block2",
            "--cache-features", "--weights", "random"]  # fmt: skip
    assert main(args) == 2
    assert not out.exists()
    assert not any(p.is_file() for p in full_dir.rglob("*")), list(full_dir.rglob("*"))


def test_disk_too_small_message(folder, tmp_path, full_dir, monkeypatch, capsys):
    monkeypatch.setenv("VGG_JAX_CACHE", str(full_dir))
    with pytest.raises(UserError) as e:
        train(cfg(folder, tmp_path / "run", image_size=64, freeze_through="block2", cache_features=True))
    line = str(e.value)
    assert "\n" not in line and "needs 458.8 KB" in line and "block2_pool outputs of 16x16x8 float32" in line, line
    assert "free" in line and "`cache_features=False`" in line, line


def test_large_cut_is_off_by_default_and_says_so(folder, tmp_path, cache, capsys):
    train(cfg(folder, tmp_path / "run", freeze_through="block3"))
    out = capsys.readouterr().out
    assert "off by default at block3_pool" in out and "backbone pass" not in out
    assert run_json(tmp_path / "run")["feature_cache"]["cut"] is None
