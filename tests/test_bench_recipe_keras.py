"""benchmarks/peers_recipe_keras.py: the recipe fitted by Keras 3/TF on a generated folder, run as a subprocess."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgg_jax.data.synthetic import write_folder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "peers_recipe_keras.py"
SEED = 3
needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")


def run_script(*args: str) -> subprocess.CompletedProcess:
    """The script in its own process, TensorFlow quiet."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """16 train and 8 valid images (8 and 4 per class), small and of varied size."""
    return write_folder(tmp_path_factory.mktemp("recipe") / "d", train=8, valid=4, test=0, seed=SEED, size=(40, 48))


@needs_tf
def test_tiny_fit_reports_epochs_counts_and_loss(folder, tmp_path):
    out = tmp_path / "r.json"
    r = run_script("--data", str(folder), "--tiny", "--epochs", "2", "--batch", "4", "--json", str(out))
    assert r.returncode == 0, f"seed {SEED}: {r.stderr[-3000:]}"
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, r.stdout
    result = json.loads(lines[0][len("RESULT ") :])
    assert json.loads(out.read_text()) == result
    assert len(result["epoch_s"]) == 2 and all(t > 0 for t in result["epoch_s"])
    assert len(result["valid_s"]) == 2 and all(0 < v < e for v, e in zip(result["valid_s"], result["epoch_s"]))
    assert result["fit_s"] >= sum(result["epoch_s"])
    assert result["train_images"] == len(list((folder / "train").rglob("*.jpg")))
    assert result["valid_images"] == len(list((folder / "valid").rglob("*.jpg")))
    assert all(math.isfinite(result["final"][k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
    assert (result["framework"], result["backend"]) == ("keras", "tensorflow")
    assert result["data_loader"] == "flow_from_directory"
    assert result["trainable_weights"] == 32 + 1  # only the new Dense(1) head on fc2's 32 units trains
    assert (result["epochs"], result["batch"], result["image_size"]) == (2, 4, 32)


def test_folder_not_in_recipe_layout_gives_one_line(tmp_path):
    root = write_folder(tmp_path / "d", train=1, valid=1, test=0, seed=SEED, size=(32, 32))
    for f in (root / "valid" / "dogs").iterdir():
        f.unlink()
    (root / "valid" / "dogs").rmdir()
    out = tmp_path / "r.json"
    r = run_script("--data", str(root), "--tiny", "--epochs", "1", "--json", str(out))
    assert r.returncode == 2
    want = f"{root / 'valid' / 'dogs'}: no such folder; --data needs DIR/{{train,valid}}/{{cats,dogs}}/*.jpg"
    assert r.stderr.strip().splitlines() == [f"peers_recipe_keras: error: {want}"]
    assert not out.exists() and "RESULT" not in r.stdout


@needs_tf
def test_broken_image_is_named_in_one_line(tmp_path):
    root = write_folder(tmp_path / "d", train=2, valid=1, test=0, seed=SEED, size=(32, 32))
    broken = root / "train" / "dogs" / "dog.1.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "r.json"
    r = run_script("--data", str(root), "--tiny", "--epochs", "1", "--batch", "2", "--json", str(out))
    assert r.returncode == 2, f"seed {SEED}: {r.stderr[-3000:]}"
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"peers_recipe_keras: error: {broken}: cannot read this image ("), r.stderr[-3000:]
    assert not out.exists() and "RESULT" not in r.stdout
