"""The run folder under stress: one trainer per folder, damaged checkpoints passed over by name, divergence
that never checkpoints NaN, failed starts that leave nothing behind, and files with the umask's mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import SMALL
from vgg_jax.train.checkpoint import COMMIT, Checkpoints
from vgg_jax.cli import main
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.inference.evaluate import load_run
from vgg_jax.data.synthetic import write_folder
from vgg_jax.train.trainer import Diverged, train

SMALL_ARGS = [
    "--weights", "random", "--arch", "vgg11", "--widths", "8,8,16,16,16", "--fc-units", "32", "--image-size", "32",
    "--batch-size", "4",
]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=16, valid=8, test=4, seed=11)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))


def cfg(folder, out, **changes) -> TrainConfig:
    return TrainConfig(data=str(folder), out=str(out), **{**SMALL, **changes})


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """A finished run with epoch-end and mid-epoch checkpoints (kept: the last 2 and the best)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(out.parent / "cache"))
        train(cfg(folder, out, epochs=3, freeze_through="none", checkpoint_every=1, keep_checkpoints=2))
    return out


def copy_run(run, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def one_error_line(err: str) -> str:
    """The one line a user mistake gets on stderr (progress bars aside)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("vgg-jax: error: "), err
    return lines[0]


@pytest.mark.slow
def test_two_trains_started_together_on_one_folder(folder, tmp_path):
    """Both start at once; whichever takes the lock is held there (a test hook, not a sleep) while the other
    must refuse with the holder's pid; then the holder is released and finishes intact."""
    out, release = tmp_path / "run", tmp_path / "release"
    env = {**os.environ, "VGG_JAX_PAUSE": f"run-locked:{release}", "VGG_JAX_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "vgg_jax", "train", "--data", str(folder), "--out", str(out), *SMALL_ARGS]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    deadline = time.monotonic() + 240
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for an event (one exits), bounded; no timing is assumed
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    _, err = loser.communicate()
    assert loser.returncode == 2, err
    line = one_error_line(err)
    assert f"another vgg-jax train (pid {winner.pid}) is running in this folder" in line, line
    release.touch()
    _, winner_err = winner.communicate(timeout=240)
    assert winner.returncode == 0, winner_err[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["out"] == str(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)) and [r["step"] for r in rows] == sorted(r["step"] for r in rows), keys
    load_run(out, which="latest")


@pytest.mark.parametrize("which", ["latest", "best"])
def test_damaged_checkpoint_is_named_and_passed_over_by_every_reader(trained, folder, tmp_path, capsys, which):
    run = copy_run(trained, tmp_path)
    checkpoints = Checkpoints(run / "checkpoints")
    target = checkpoints.latest_step() if which == "latest" else checkpoints.best_step()
    fallback = [s for s in checkpoints.ranked(which) if s != target][0]
    shutil.rmtree(run / "checkpoints" / str(target) / "state" / "ocdbt.process_0")  # its arrays are lost
    commands = [
        ["evaluate", str(run)],
        ["predict", str(run), str(folder / "test1"), "--csv", str(tmp_path / "p.csv")],
        ["export", str(run), "-o", str(tmp_path / "m.safetensors"), "--which", which],
    ]
    for command in commands:
        if which == "latest" and command[0] != "export":
            continue  # evaluate and predict read the best checkpoint
        assert main(command) == 0, command
        out = capsys.readouterr().out
        assert f"checkpoint {target} is damaged" in out and f"using {fallback}" in out, (command, out)
    if which == "latest":
        # --resume continues from the newest good checkpoint and ends as the uninterrupted run did.
        train(cfg(folder, run, epochs=3, freeze_through="none", checkpoint_every=1, keep_checkpoints=2), resume=True)
        assert f"checkpoint {target} is damaged" in capsys.readouterr().out
        a, b = load_run(run, which="latest")[3], load_run(trained, which="latest")[3]
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))


def test_checkpoint_without_commit_marker_is_incomplete(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    latest = Checkpoints(run / "checkpoints").steps()[-1]
    (run / "checkpoints" / str(latest) / COMMIT).unlink()
    _, _, _, trainable, _ = load_run(run, which="latest")
    out = capsys.readouterr().out
    assert f"checkpoint {latest} is incomplete" in out and "using" in out, out


def test_checkpoint_of_another_model_is_a_mismatch_not_damage(trained, folder, tmp_path):
    other = tmp_path / "other"
    train(cfg(folder, other, epochs=1, freeze_through="none", fc_units=16))
    run = copy_run(trained, tmp_path)
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(other / "checkpoints", run / "checkpoints")
    with pytest.raises(UserError, match="does not fit this model"):
        load_run(run)


def test_diverging_run_never_checkpoints_nan_and_logs_valid_json(folder, tmp_path):
    out = tmp_path / "diverged"
    with pytest.raises(Diverged, match="NaN/inf"):
        train(cfg(folder, out, epochs=2, freeze_through="none", lr=1e30, optimizer="sgd", checkpoint_every=1))
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl")) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows, "the diverged run's metrics are kept"
    assert Checkpoints(out / "checkpoints").steps(), "no good checkpoint before the divergence"
    _, _, _, trainable, _ = load_run(out, which="latest")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(trainable))


def test_nan_validation_loss_stops_the_run(folder, tmp_path, monkeypatch):
    import vgg_jax.train.trainer as trainer

    real = trainer.evaluate_batches

    def nan_loss(*args, **kwargs):
        return {**real(*args, **kwargs), "loss": float("nan")}

    monkeypatch.setattr(trainer, "evaluate_batches", nan_loss)
    out = tmp_path / "nan-valid"
    with pytest.raises(Diverged, match="validation loss"):
        train(cfg(folder, out, epochs=2))
    assert not Checkpoints(out / "checkpoints").steps(), "an epoch with a NaN validation loss was checkpointed"


def test_failed_start_leaves_nothing_behind(folder, tmp_path, monkeypatch):
    import vgg_jax.train.trainer as trainer

    out = tmp_path / "run"
    with pytest.raises(UserError):
        train(cfg(folder, out, weights=str(tmp_path / "missing.safetensors")))
    assert not out.exists()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(trainer, "Checkpoints", broken)  # fails after the run folder was opened
    with pytest.raises(RuntimeError):
        train(cfg(folder, out))
    assert not out.exists(), list(out.iterdir())
    monkeypatch.undo()
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))
    train(cfg(folder, out))  # the retry is not refused as "already holds a run"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_we_write_honour_the_umask(folder, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        train(cfg(folder, out, epochs=1))
        assert main(["predict", str(out), str(folder / "test1"), "--csv", str(tmp_path / "sub.csv")]) == 0
        assert main(["export", str(out), "-o", str(tmp_path / "model.safetensors")]) == 0
        # A pretrained backbone turns the feature cache on: its files too.
        train(cfg(folder, tmp_path / "cached", epochs=1, weights=str(tmp_path / "model.safetensors")))
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    files = [tmp_path / "sub.csv", tmp_path / "model.safetensors"]
    files += [p for run in (out, tmp_path / "cached") for p in run.rglob("*") if p.is_file()]
    files += [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "jax" not in p.parts]
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != want}
    assert not wrong, f"umask {oct(umask)}: want {oct(want)}, got {wrong}"
    assert {".png", ".json", ".npy", ".csv", ".safetensors"} <= {p.suffix for p in files}
    assert any(p.name == ".lock" for p in files)


@pytest.mark.parametrize("where", ["readonly_dir", "full_dir"])
def test_train_into_an_unwritable_place_is_one_line(folder, where, request, capsys):
    place = request.getfixturevalue(where)
    rc = main(["train", "--data", str(folder), "--out", str(place / "run"), *SMALL_ARGS, "--freeze-through", "none"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert ("read-only file system" if where == "readonly_dir" else "no space left on device") in line, line
    assert not list(place.iterdir()), "a failed start left files behind"


def test_predict_gives_every_file_one_row_with_a_unique_id(trained, tmp_path):
    """one.jpg and one.png keep their extensions as ids; an unreadable file still gets its (unique) row."""
    from PIL import Image

    images = tmp_path / "test1"
    images.mkdir()
    rng = np.random.default_rng(5)
    for name in ("one.jpg", "one.png", "2.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)).save(images / name)
    (images / "3.jpg").write_bytes(b"")  # zero bytes: unreadable
    out = tmp_path / "sub.csv"
    assert main(["predict", str(trained), str(images), "--csv", str(out)]) == 0
    rows = out.read_text().splitlines()
    ids = [r.split(",")[0] for r in rows[1:]]
    assert rows[0] == "id,label" and sorted(ids) == ["2", "3", "one.jpg", "one.png"], rows
    assert dict(r.split(",") for r in rows[1:])["3"] == "0.500000"
