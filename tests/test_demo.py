"""The README's main job runs the whole recipe offline on built-in defaults and says clearly when
the weights are random."""

import csv
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # `vgg-jax demo` in a child process


def test_demo_offline_whole_recipe(tmp_path):
    env = {
        **os.environ,
        "VGG_JAX_CACHE": str(tmp_path / "cache"),
        "HOME": str(tmp_path),
        "KERAS_HOME": str(tmp_path / "k"),
    }
    env.pop("VGG_JAX_WEIGHTS", None)
    out_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "vgg_jax", "demo", "--offline", "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "USING RANDOM WEIGHTS" in out and "Keras 0.x" in out and "rotated 180 degrees" in out
    assert "PASS" in out and "feature cache: train backbone pass over 48 images" in out and "confusion matrix" in out
    assert "the backbone had RANDOM weights" in out
    run = out_dir / "run"
    for name in ("run.json", "metrics.jsonl", "curves.png", "submission.csv"):
        assert (run / name).exists(), name
    rows = list(csv.reader(open(run / "submission.csv")))
    assert rows[0] == ["id", "label"] and sorted(int(r[0]) for r in rows[1:]) == list(range(1, 9))
