"""Without the `tfds` extra: an image folder trains with tensorflow unimportable, and a tfds: spec is one line naming
the extra. A subprocess blocks the imports through sys.meta_path, as if tensorflow were not installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import SMALL

pytestmark = pytest.mark.slow  # a training child process

SEED = 3
BLOCKER = """
import sys

class Hide:
    # Every import finder, made blind to tensorflow: imports fail and find_spec says None, as when not installed.
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "tensorflow_datasets"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
"""
SCRIPT = """
import json, sys
from vgg_jax import data
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.data.synthetic import write_folder
from vgg_jax.train.trainer import train

root = write_folder(sys.argv[1] + "/data", train=24, valid=8, test=0, seed=int(sys.argv[3]))
result = train(TrainConfig(data=str(root), out=sys.argv[1] + "/run", epochs=2, **json.loads(sys.argv[2])))
try:
    data.open_source("tfds:cats_vs_dogs")
    error = None
except UserError as e:
    error = str(e)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("tensorflow", "tensorflow_datasets"))
print(json.dumps({"loss": float(result["loss"]), "loaded": loaded, "error": error}))
"""


def test_a_folder_trains_without_tensorflow_and_a_tfds_spec_names_the_extra(tmp_path):
    small = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + SCRIPT, str(tmp_path), json.dumps(small), str(SEED)],
        capture_output=True,
        text=True,
        check=False,  # the assert below shows stderr
    )
    assert proc.returncode == 0, f"seed {SEED}\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [], (out, f"seed {SEED}")  # it trained (exit 0) and never imported tensorflow
    assert out["error"] == (
        "tfds:cats_vs_dogs: tfds sources need the tfds extra (No module named 'tensorflow'): pip install 'vgg-jax[tfds]'"
    )
