"""Data parallelism: 8 virtual CPU devices give the parameters of 1 device with the same global batch,
the step's inputs really are sharded, multi-host training on 127.0.0.1 agrees across processes,
and bfloat16 compute stays close to float32 and still learns."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_jax.convert import legacy
from vgg_jax.models.parity import rel_error
from tests.conftest import SMALL
from vgg_jax.train.config import TrainConfig
from vgg_jax.models.vgg import VGG
from vgg_jax.models.preprocess import preprocess_input
from vgg_jax.data.synthetic import write_folder
from vgg_jax.train.trainer import train

WORKER = Path(__file__).with_name("parallel_worker.py")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "d", train=24, valid=8, test=0, seed=4, size=(32, 40))


def worker(folder, out, devices: int, batch: int, shard_fc: bool = False, optimizer: str = "sgd") -> dict:
    """Trains 6 steps (dropout on) in a subprocess with `devices` CPU devices.

    SGD+momentum, because Adam divides by sqrt(v): gradient entries that are zero up to float noise
    get full-size steps whose sign is that noise, so two correct runs that sum in a different order
    drift apart by a few percent within steps; SGD keeps float noise at float size.
    """
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "VGG_JAX_CACHE": str(Path(out).parent / "cache")}  # fmt: skip
    result = subprocess.run([sys.executable, str(WORKER), str(folder), str(out), str(batch), "1" if shard_fc else "0", optimizer],
                            capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[1])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one(folder, tmp_path_factory):
    return worker(folder, tmp_path_factory.mktemp("one") / "run", devices=1, batch=16)


@pytest.mark.slow
def test_eight_devices_equal_one_and_inputs_are_sharded(folder, one, tmp_path):
    eight = worker(folder, tmp_path / "eight", devices=8, batch=16)
    assert (one["devices"], eight["devices"]) == (1, 8)
    seen = eight["seen"]
    assert seen["devices"] == 8
    assert set(seen["batch_arg"].values()) == {"P('data',)"} == set(seen["batch_compiled"].values())
    assert set(seen["params_compiled"].values()) == {"P()"}  # replicated
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
        eight["params"],
        one["params"],
    )


@pytest.mark.slow
def test_sharded_fc_weights_give_the_same_parameters(folder, one, tmp_path):
    sharded = worker(folder, tmp_path / "fc", devices=8, batch=16, shard_fc=True)
    specs = sharded["seen"]["params_compiled"]
    assert specs["fc1/kernel"] == specs["fc2/kernel"] == "P(None, 'data')"
    assert specs["head/kernel"] == specs["block1_conv1/kernel"] == "P()"
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
        sharded["params"],
        one["params"],
    )


@pytest.mark.slow
def test_batch_must_divide_over_devices(folder, tmp_path):
    result = worker(folder, tmp_path / "bad", devices=8, batch=12)
    assert result["error"] == "`batch_size` 12 does not divide over 8 devices; use a multiple of 8 (e.g. 8, 16)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost_agree(folder, tmp_path):
    """README's two-process launch: two OS processes, CPU, coordinator on 127.0.0.1."""
    port = free_port()
    args = ["--data", str(folder), "--out", str(tmp_path / "run"), "--weights", "random", "--arch", "vgg11",
            "--widths", "8,8,16,16,16", "--fc-units", "32", "--image-size", "32", "--batch-size", "8", "--epochs", "2",
            "--freeze-through", "none", "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "VGG_JAX_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "vgg_jax", "train", *args, "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]  # fmt: skip
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    digests = [re.search(r"process (\d)/2: final trainable params sha256 (\w+)", o) for o in outputs]
    assert all(digests) and digests[0].group(2) == digests[1].group(2)
    assert "valid loss" in outputs[0] and "valid loss" not in outputs[1], "only process 0 reports"
    assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "run.json").exists()


@pytest.mark.slow
def test_bfloat16_vgg16_forward_close_to_float32():
    params = legacy.random_params(seed=9)
    images = np.random.default_rng(9).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    outputs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = VGG(classifier_activation=None, dtype=dtype)
        outputs[dtype] = jax.jit(lambda p, x, m=model: m.apply({"params": p}, preprocess_input(x, m.dtype)))(
            params, images
        )
    err = rel_error(outputs[jnp.bfloat16], outputs[jnp.float32])
    print(f"bf16 vs f32 VGG16 logits: max rel error {err:.2e}")
    assert err <= 2e-2


def test_bfloat16_training_still_learns(folder, tmp_path):
    data = write_folder(tmp_path / "data", train=40, valid=16, test=0, seed=1)
    result = train(
        TrainConfig(
            data=str(data), out=str(tmp_path / "bf16"), epochs=5, freeze_through="none", dtype="bfloat16", **SMALL
        )
    )
    print(f"bf16 training: valid accuracy {result['accuracy']:.3f}")
    assert result["accuracy"] >= 0.95
