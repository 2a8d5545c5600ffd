"""The trainer end to end on a generated folder of real JPEGs: learning, freezing, the feature cache,
evaluate/predict, run-folder rules and divergence. Small VGG variants at 32x32 keep it fast."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import SMALL
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.inference.evaluate import evaluate, load_run, predict
from vgg_jax.inference.export import export
from vgg_jax.data.synthetic import write_folder
from vgg_jax.train.trainer import Diverged, train


pytestmark = pytest.mark.usefixtures("own_cache")  # conftest: a cache folder of this module's own


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=40, valid=16, test=10, seed=1)


@pytest.fixture(scope="module")
def scratch_run(folder, tmp_path_factory, cache):
    """A small VGG trained end to end from random init (every layer trainable)."""
    out = tmp_path_factory.mktemp("runs") / "scratch"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(cache))
        result = train(TrainConfig(data=str(folder), out=str(out), epochs=5, freeze_through="none", **SMALL))
    return out, result


def cfg(folder, out, **changes) -> TrainConfig:
    return TrainConfig(data=str(folder), out=str(out), **{**SMALL, **changes})


def heads(run) -> dict:
    return jax.tree.map(np.asarray, load_run(run, which="latest")[3]["head"])


def test_learns_from_random_init(scratch_run):
    out, result = scratch_run
    print(f"scratch: valid accuracy {result['accuracy']:.3f}, loss {result['loss']:.3f}")
    assert result["accuracy"] >= 0.95
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "valid"] == [1, 2, 3, 4, 5]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert (
        run["data"]["train_examples"] == 80 and len(run["data"]["train"]) >= 16 and run["classes"] == ["cats", "dogs"]
    )


def test_pretrained_backbone_beats_random_backbone(scratch_run, folder, tmp_path):
    from vgg_jax.cli import main

    run, _ = scratch_run
    weights = tmp_path / "pretrained.safetensors"
    assert main(["export", str(run), "-o", str(weights)]) == 0
    pretrained = train(cfg(folder, tmp_path / "pre", weights=str(weights), epochs=3))
    random = train(cfg(folder, tmp_path / "rnd", epochs=3))
    print(
        f"head only: pretrained backbone {pretrained['accuracy']:.3f} / {pretrained['loss']:.3f}, random {random['accuracy']:.3f} / {random['loss']:.3f}"
    )
    assert pretrained["accuracy"] >= random["accuracy"] and pretrained["loss"] < random["loss"]
    assert pretrained["accuracy"] >= 0.95


def test_feature_cache_equals_training_through_the_backbone(scratch_run, folder, tmp_path, capsys, monkeypatch):
    run, _ = scratch_run
    weights = str(export(run, tmp_path / "pretrained.safetensors"))
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))  # earlier tests may have cached these features
    train(cfg(folder, tmp_path / "cached", weights=weights, epochs=2, cache_features=True))
    assert "backbone pass over 80 images" in capsys.readouterr().out
    train(cfg(folder, tmp_path / "direct", weights=weights, epochs=2, cache_features=False))
    a, b = heads(tmp_path / "cached"), heads(tmp_path / "direct")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)
    # A second run reuses the stored features ...
    train(cfg(folder, tmp_path / "again", weights=weights, epochs=1, cache_features=True))
    assert "train fc1 features from" in capsys.readouterr().out


def test_stale_or_foreign_cache_is_never_used(scratch_run, folder, tmp_path, capsys):
    run, _ = scratch_run
    weights = str(export(run, tmp_path / "pretrained.safetensors"))
    data = tmp_path / "data"
    write_folder(data, train=12, valid=8, test=0, seed=5)
    train(cfg(data, tmp_path / "one", weights=weights, epochs=1))
    capsys.readouterr()
    write_folder(data / "extra", train=1, valid=0, test=0, seed=6)  # new files elsewhere change nothing ...
    (data / "train" / "cats" / "cat.0.jpg").write_bytes(
        (data / "train" / "cats" / "cat.1.jpg").read_bytes()
    )  # ... an edited one does
    train(cfg(data, tmp_path / "two", weights=weights, epochs=1))
    out = capsys.readouterr().out
    print(out)
    assert "feature cache: train backbone pass" in out and "feature cache: valid fc1 features from" in out


def test_foreign_cache_metadata_is_rejected(tmp_path, monkeypatch):
    from vgg_jax.train import features

    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path))
    fields = {"weights": "a" * 64, "data": "x", "cut": "fc1"}
    batch = {"image": np.ones((3, 4), np.float32), "mask": np.ones(3, bool), "label": np.zeros(3, np.int32)}
    features.compute(fields, "train", [batch], lambda x: x, 3, (4,), "float32")
    d = features.features_dir(fields)
    assert features.load(fields, "train", 3, say=pytest.fail) is not None
    said = []
    assert features.load(fields, "train", 4, say=said.append) is None  # a different number of examples
    meta = json.loads((d / "train.json").read_text())
    meta["fields"]["data"] = "y"
    (d / "train.json").write_text(json.dumps(meta))
    assert features.load(fields, "train", 3, say=said.append) is None
    assert [s.split(": damaged (")[1].split(";")[0] for s in said] == [
        "it holds 3 examples of float32, expected 4)", "its metadata does not match its key)"]


def test_evaluate_and_predict_every_image_once(scratch_run, tmp_path, capsys):
    run, _ = scratch_run
    big = write_folder(tmp_path / "big", train=0, valid=0, test=1001, seed=7, size=(24, 24))
    for name in ("cats", "dogs"):
        (big / "valid" / name).rmdir()
        (big / "train" / name).rmdir()
    out = predict(run, str(big / "test1"), str(tmp_path / "sub.csv"), clip=0.05, batch_size=64)
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["id", "label"] and len(rows) == 1002
    assert sorted(int(r[0]) for r in rows[1:]) == list(range(1, 1002))
    assert all(0.05 <= float(r[1]) <= 0.95 for r in rows[1:])
    result = evaluate(run, batch_size=7)  # 32 valid images: 5 batches, the last padded
    assert result["count"] == 32 and result["confusion"].sum() == 32
    assert "confusion matrix" in capsys.readouterr().out


def test_run_folder_rules(scratch_run, folder, tmp_path):
    run, _ = scratch_run
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg(folder, run, epochs=1))
    with pytest.raises(UserError, match=r"different configuration \(lr\)"):
        train(cfg(folder, run, epochs=5, freeze_through="none", lr=1.0), resume=True)
    with pytest.raises(UserError, match="nothing to resume"):
        train(cfg(folder, tmp_path / "new", epochs=1), resume=True)


def test_divergence_stops_with_a_clear_message(folder, tmp_path):
    out = tmp_path / "nan"
    # SGD at lr 30 blows up within a few steps, after some good ones were checkpointed.
    with pytest.raises(Diverged, match=r"NaN/inf near step \d+ .* Last good checkpoint: step \d+") as info:
        train(
            cfg(folder, out, epochs=2, freeze_through="none", optimizer="sgd", lr=30.0, checkpoint_every=1, log_every=1)
        )
    print(info.value)
    _, _, _, trainable, _ = load_run(out, which="latest")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(trainable)), (
        "a non-finite state was checkpointed"
    )


@pytest.mark.slow
def test_cli_errors_are_one_line(folder, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vgg_jax", "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"),
         "--weights", "random"],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "missing" in result.stderr, (
        result.stderr
    )


def test_cli_flags_reach_the_config(tmp_path):
    """Every train flag lands in TrainConfig (a flag parsed but dropped is a silent bug)."""
    import dataclasses

    from vgg_jax.cli import _train_config, build_parser

    args = build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--weights", "random", "--shard-fc", "--dtype", "bfloat16", "--tfds-manual-dir", "m",
         "--lr-mult", "conv=0.1", "--clip-norm", "1", "--schedule", "cosine", "--warmup-steps", "3", "--augment",
         "--checkpoint-every", "5", "--no-cache-features", "--widths", "8,8,16,16,16", "--fc-units", "32"]
    )  # fmt: skip
    cfg = _train_config(args)
    assert (cfg.shard_fc, cfg.dtype, cfg.tfds_manual_dir, cfg.lr_mult, cfg.clip_norm) == (
        True,
        "bfloat16",
        "m",
        "conv=0.1",
        1.0,
    )
    assert (cfg.schedule, cfg.warmup_steps, cfg.augment, cfg.checkpoint_every, cfg.cache_features) == (
        "cosine",
        3,
        True,
        5,
        False,
    )
    assert cfg.widths == (8, 8, 16, 16, 16) and cfg.fc_units == 32
    config_fields = {f.name for f in dataclasses.fields(cfg)}
    dests = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    unmapped = {"help", "resume", "overwrite", "distributed", "coordinator", "num_processes", "process_id"}
    assert dests - unmapped <= config_fields, f"flags with no config field: {dests - unmapped - config_fields}"
