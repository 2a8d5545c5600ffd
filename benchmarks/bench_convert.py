"""Convert time and peak memory for a full-size (528 MB) VGG16 file, next to a plain h5py read of it.

    .venv/bin/python benchmarks/bench_convert.py [--workdir /tmp/vgg-jax-bench-convert] [--repeats 3]

Writes one JSON line per variant and a markdown table; appends nothing to the repo by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.child import run_child
from vgg_jax.convert import legacy

# Each measurement runs in its own process under benchmarks/child.py's wrapper, so its peak RSS is its own
# (a child forked from this large process would inherit our RSS high-water mark).
CHILD = r"""
import json, sys, time
variant, src, out = sys.argv[1:4]
t0 = time.perf_counter()
if variant == "h5py read":
    import h5py
    with h5py.File(src, "r") as f:
        arrays = []
        f.visititems(lambda n, o: arrays.append(o[()]) if hasattr(o, "shape") else None)
else:
    from vgg_jax.convert import convert_file
    convert_file(src, out)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0}))
"""


def measure(variant: str, src: Path, out: Path) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one `variant` ("h5py read" or "vgg-jax convert") of `src`, in its own process."""
    result = run_child(["-c", CHILD, variant, str(src), str(out)])
    if "error" in result:
        raise RuntimeError(f"{variant} of {src}: {result['error']}")
    return result["seconds"], int(result["process_peak_rss_mb"] * 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/vgg-jax-bench-convert")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    files = {
        "Keras 0.x Theano (flip + fc1 reorder)": work / "vgg16_th.h5",
        "Keras 1 tf kernels (no transform)": work / "vgg16_tf.h5",
    }
    params = None
    for label, path in files.items():
        if not path.exists():
            params = params or legacy.random_params(seed=0)
            (legacy.write_keras0 if "Theano" in label else lambda p, x: legacy.write_keras1(p, x, "tf"))(path, params)
    rows = []
    for label, path in files.items():
        size = path.stat().st_size
        for variant in ("h5py read", "vgg-jax convert"):
            runs = [measure(variant, path, work / "out.safetensors") for _ in range(args.repeats)]
            row = {
                "bench": "convert",
                "file": label,
                "variant": variant,
                "file_mb": round(size / 1e6, 1),
                "median_s": round(statistics.median(r[0] for r in runs), 3),
                "peak_rss_mb": round(max(r[1] for r in runs) / 1e6, 1),
                "peak_over_file": round(max(r[1] for r in runs) / size, 2),
                "repeats": args.repeats,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| file | variant | median s | peak RSS MB | peak / file size |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['variant']} | {r['median_s']} | {r['peak_rss_mb']} | {r['peak_over_file']}x |")


if __name__ == "__main__":
    main()
