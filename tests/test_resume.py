"""Kill and resume: SIGKILL a training process at random points (checkpoints are written every step, so
many kills land inside a write), resume, and end bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from vgg_jax.checkpoint import Checkpoints
from vgg_jax.evaluate import load_run
from vgg_jax.synthetic import write_folder

ARGS = [
    "--weights",
    "random",
    "--arch",
    "vgg11",
    "--widths",
    "8,8,16,16,16",
    "--fc-units",
    "32",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--epochs",
    "3",
    "--freeze-through",
    "none",
    "--lr",
    "3e-3",
    "--checkpoint-every",
    "1",
    "--log-every",
    "1",
    "--keep-checkpoints",
    "2",
]


def command(data, out, *extra):
    return [sys.executable, "-m", "vgg_jax", "train", "--data", str(data), "--out", str(out), *ARGS, *extra]


def final_state(run):
    _, _, _, trainable, _ = load_run(run, which="latest")
    return jax.tree.map(np.asarray, trainable)


def every_checkpoint_restores(run) -> int:
    steps = Checkpoints(run / "checkpoints").manager.all_steps()
    for step in steps:
        load_run(run, which=step)  # raises if unreadable
    return len(steps)


def test_sigkill_anywhere_then_resume_is_bitwise_identical(tmp_path):
    data = write_folder(tmp_path / "data", train=20, valid=6, test=0, seed=3, size=(32, 40))
    env = {**os.environ, "VGG_JAX_CACHE": str(tmp_path / "cache")}
    reference = subprocess.run(
        command(data, tmp_path / "reference"), capture_output=True, text=True, timeout=300, env=env
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    rng = random.Random(int(time.time()))
    run, kills, finished, in_write = tmp_path / "killed", 0, False, 0
    for attempt in range(12):
        extra = ["--resume"] if (run / "run.json").exists() else []
        proc = subprocess.Popen(
            command(data, run, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        if attempt < 4:
            # Wait until this process has written a checkpoint of its own, then kill it somewhere later.
            seen = set(os.listdir(run / "checkpoints")) if (run / "checkpoints").exists() else set()
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                now = set(os.listdir(run / "checkpoints")) if (run / "checkpoints").exists() else set()
                if now - seen - {"descriptor"}:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        proc.communicate(timeout=300)
        leftovers = (
            [p.name for p in (run / "checkpoints").glob("*") if "tmp" in p.name]
            if (run / "checkpoints").exists()
            else []
        )
        in_write += bool(leftovers)
        print(
            f"attempt {attempt}: rc {proc.returncode}, kept {sorted(p.name for p in (run / 'checkpoints').glob('*'))}"
        )
        if attempt >= 4 or proc.returncode == 0:
            assert proc.returncode in (0, -signal.SIGKILL)
        assert every_checkpoint_restores(run) >= 0
        if proc.returncode == 0:
            finished = True
            break
    print(f"{kills} kills, {in_write} of them during a checkpoint write (temp folder left behind)")
    assert finished and kills >= 3, f"finished={finished} kills={kills}"
    jax.tree.map(np.testing.assert_array_equal, final_state(run), final_state(tmp_path / "reference"))
    steps = [
        json.loads(l)["step"]
        for l in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(l)["kind"] == "train"
    ]
    assert steps == sorted(set(steps)), "metrics logged twice for the same step after a resume"
