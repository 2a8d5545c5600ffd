"""The README's main job runs offline on built-in defaults and says clearly when weights are random."""

import subprocess
import sys


def test_demo_offline_random_weights_pass(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vgg_jax", "demo", "--offline", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        env={"VGG_JAX_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path), "PATH": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "USING RANDOM WEIGHTS" in out and "Keras 0.x" in out and "rotated 180 degrees" in out
    assert "result: PASS" in out and (tmp_path / "demo" / "vgg16.safetensors").exists()
