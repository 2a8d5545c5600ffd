"""One measurement of ours, run as a child of benchmarks/run_all.py; prints one `RESULT {json}` line.

    python benchmarks/ours.py --variant frozen --batch 8 [--steps 5 --warmup 1 --dtype float32 --xla tuned]

Variants: the step variants of `benchmarks.throughput` (infer, frozen, block5, full, naive), built by the
same code `vgg-jax bench` uses (the trainer's jitted train_step / eval_step with its shardings), plus
  ceiling  a single 3x3 conv (8x56x56x256 -> 256, SAME) and a 4096^3 matmul in JAX
  decode   the input pipeline (vgg_jax.data on grain, in-process threads, via benchmarks/bench_data.py): 224x224 img/s
  convert  `vgg-jax convert` of a full-size Keras 1 VGG16 file (via benchmarks/bench_convert.py)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.child import add_step_arguments, emit
from benchmarks.timing import repeat_ops, threads_info, timed_steps


def step_variant(args: argparse.Namespace) -> dict:
    """One of our step variants, built as `vgg-jax bench` builds it, timed by timing.timed_steps."""
    import jax
    import numpy as np

    from benchmarks import throughput as bench

    case = bench.build(args.variant, args.batch, args.dtype, tiny=args.tiny, xla=args.xla)
    bench.clear_params_cache()  # the host copy of the random params is not part of the step's memory
    before = None
    if args.variant == "naive":  # the frozen weights live in the state here: check they stay put
        before = np.array(case.args[0].params["block1_conv1"]["kernel"])
    timing = timed_steps(case.step, args.steps, args.warmup)
    state = case.args[0]
    out = {
        "gflop_per_image": case.gflop_per_image,
        "trace_s": round(case.trace_s, 3),
        "compile_s": round(case.compile_s, 3),
        **timing,
    }
    if args.variant != "infer":
        out["trainable_params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
        out["opt_state_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(state.opt_state)))
    if before is not None:
        out["backbone_unchanged"] = bool(np.array_equal(before, np.array(state.params["block1_conv1"]["kernel"])))
    return out


def ceiling(args: argparse.Namespace) -> dict:
    """GFLOP/s of a single 3x3 conv and a matmul in JAX, with our XLA options or XLA's defaults."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    b, s, c, n = (2, 28, 64, 512) if args.tiny else (8, 56, 256, 4096)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((b, s, s, c), np.float32))
    w = jax.device_put(rng.standard_normal((3, 3, c, c), np.float32) * 0.02)
    a = jax.device_put(rng.standard_normal((n, n), np.float32))
    from benchmarks.throughput import compiler_options

    def conv_fn(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    opts = compiler_options(args.xla)
    conv = jax.jit(conv_fn).lower(x, w).compile(opts)
    mm = jax.jit(jnp.matmul).lower(a, a).compile(opts)
    ops = {
        "conv": (lambda: conv(x, w).block_until_ready(), 2 * b * s * s * c * c * 9),
        "matmul": (lambda: mm(a, a).block_until_ready(), 2 * n**3),
    }
    return repeat_ops(ops, args.repeats)


def decode(args: argparse.Namespace) -> dict:
    """The input pipeline's steady img/s and CPU ms per image on generated JPEGs (benchmarks/bench_data.py)."""
    from benchmarks import bench_data
    from vgg_jax import data
    from vgg_jax.data.decode import default_threads

    folder = Path(args.workdir) / "jpeg"
    bench_data.generate(folder, 64 if args.tiny else 400)
    source = data.open_source(folder, "train")
    threads = default_threads()
    batch = 8 if args.tiny else 32
    bench_data.measure(bench_data.grain_batches(source, batch, 0, threads), batch)  # warm-up: page cache, imports
    row = bench_data.measure(bench_data.grain_batches(source, batch, 0, threads), batch)
    return {"img_per_s": row["img_per_s"], "cpu_ms_per_img": row["cpu_ms_per_img"], "threads": threads}


def convert(args: argparse.Namespace) -> dict:
    """Median seconds and peak RSS of `vgg-jax convert` on a full-size Keras 1 file (benchmarks/bench_convert.py)."""
    from benchmarks import bench_convert
    from vgg_jax.convert import legacy

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / "vgg16_tf.h5"
    if not src.exists():
        legacy.write_keras1(src, legacy.random_params(seed=0), "tf")
    runs = [bench_convert.measure("vgg-jax convert", src, work / "out.safetensors") for _ in range(args.repeats)]
    return {
        "median_s": statistics.median(r[0] for r in runs),
        "convert_peak_rss_mb": max(r[1] for r in runs) / 2**20,
        "file_mb": src.stat().st_size / 1e6,
    }


def main() -> None:
    """Parses the options, runs one variant, prints its RESULT line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--xla", choices=["tuned", "default"], default="tuned")
    add_step_arguments(p)
    p.add_argument("--workdir", default="/tmp/vgg-jax-bench")
    args = p.parse_args()
    import jax

    fn = {"ceiling": ceiling, "decode": decode, "convert": convert}.get(args.variant, step_variant)
    result = fn(args)
    emit(
        {
            **result,
            "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "device": jax.devices()[0].device_kind,
            **threads_info(),
        }
    )


if __name__ == "__main__":
    main()
