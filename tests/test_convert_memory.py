"""Converting a full-size (528 MB) VGG16 file peaks at most 2.5x the file size in RSS."""

import os
import subprocess
import sys

import pytest

from vgg_jax.convert import legacy

pytestmark = pytest.mark.slow  # a full-size (528 MB) VGG16 file converted in a child process

# Run the converter as a grandchild so RUSAGE_CHILDREN measures it alone.
MEASURE = """
import resource, subprocess, sys
r = subprocess.run([sys.executable, "-m", "vgg_jax.convert", *sys.argv[1:]], capture_output=True, text=True)
sys.stderr.write(r.stderr)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def test_full_size_theano_file_peak_rss(tmp_path):
    src = tmp_path / "vgg16_th.h5"
    legacy.write_keras0(src, legacy.random_params(seed=1))  # the heaviest path: flips and fc1 reorder
    size = os.path.getsize(src)
    assert size > 520e6
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(src), "-o", str(tmp_path / "out.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    code, peak = map(int, result.stdout.split())
    assert code == 0, result.stderr
    print(f"convert peak RSS {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file: {peak / size:.2f}x")
    assert peak <= 2.5 * size
