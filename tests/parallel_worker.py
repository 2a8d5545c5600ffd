"""Run by tests/test_parallel.py in a subprocess whose XLA_FLAGS fix the device count before jax starts.

Trains a small VGG with the real trainer and prints one JSON line: final params (as lists), and the
shardings the trainer's compiled step really received (recorded by a pass-through spy).
"""

import json
import sys

import jax
import numpy as np

from vgg_jax.train import parallel
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.inference.evaluate import load_run
from vgg_jax.train.trainer import train

data, out, batch_size, shard_fc, optimizer = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
seen = {}
real_jit_step = parallel.jit_step


def spying_jit_step(step_fn, state_sh, frozen_sh, mesh, donate=True, **options):
    jitted = real_jit_step(step_fn, state_sh, frozen_sh, mesh, donate, **options)

    def call(state, frozen, batch):
        if not seen:
            compiled = jitted.lower(state, frozen, batch).compile()
            state_in, _, batch_in = compiled.input_shardings[0]
            seen["batch_arg"] = {k: str(v.sharding.spec) for k, v in batch.items()}
            seen["batch_compiled"] = {k: str(v.spec) for k, v in batch_in.items()}
            seen["params_compiled"] = {
                f"{layer}/{name}": str(v.spec) for layer, d in state_in.params.items() for name, v in d.items()
            }
            seen["devices"] = len(batch["inputs"].sharding.device_set)
        return jitted(state, frozen, batch)

    return call


parallel.jit_step = spying_jit_step
cfg = TrainConfig(data=data, out=out, arch="vgg11", widths=(8, 8, 16, 16, 16), fc_units=32, image_size=32, batch_size=batch_size,
                  epochs=2, freeze_through="none", lr=3e-3, shard_fc=shard_fc, optimizer=optimizer)  # fmt: skip
try:
    train(cfg)
except UserError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
params = parallel.to_host(load_run(out, which="latest")[3])
print(
    json.dumps(
        {"devices": jax.device_count(), "seen": seen, "params": jax.tree.map(lambda x: np.asarray(x).tolist(), params)}
    )
)
