"""GPU check for a lent accelerator (run by benchmarks/gpu.sh): correctness first, then a batch-size sweep.

    python benchmarks/gpu_bench.py [--budget-s 270] [--tiny]

Needs jax, flax, optax, numpy only (no tensorflow, no network). Steps:
  1. correctness: VGG16 backbone features and head logits on the same uint8 images, bfloat16 compute vs
     float32 on the accelerator, and accelerator float32 vs the host CPU (XLA's default precision may
     use TF32 on the GPU); normwise relative error max|a - b| / max|b| against loose bounds;
  2. sweep: img/s of inference, the frozen-head train step and the full fine-tune step over batch
     sizes, bfloat16 and float32, through benchmarks.throughput (the trainer's jitted steps); configurations
     left when the time budget runs low are reported as skipped, an out-of-memory one as OOM;
  3. a short table, printed last.
`--tiny` runs the same on a tiny VGG at 32x32 (the CPU test of this script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Peak dense bfloat16 / float32 (non-tensor-core) throughput used for the MFU column, by device kind.
PEAK_TFLOPS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5)}
BOUNDS = {"bf16_vs_f32": 5e-2, "device_f32_vs_cpu_f32": 1e-2}


def rel_error(got, want) -> float:
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def correctness(tiny: bool, batch: int = 8) -> dict:
    """bf16 vs f32 and device vs CPU, on features (fc2 output) and logits."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import throughput as bench
    from vgg_jax.models import arch
    from vgg_jax.models.classifier import Classifier
    from vgg_jax.models.preprocess import preprocess_input

    size = 32 if tiny else arch.IMAGE_SIZE
    shape = bench.TINY_NET if tiny else {}
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

    def run(dtype, device, n=batch):
        model = Classifier(**shape, dtype=dtype)
        params = jax.device_put(bench.he_params(model, size), device)
        x = jax.device_put(images[:n], device)

        @jax.jit
        def fwd(p, x):
            feats = model.apply({"params": p}, preprocess_input(x, dtype), stop="fc2")
            return feats.astype(jnp.float32), model.apply({"params": p}, feats, start="fc2")

        return [np.asarray(a) for a in fwd(params, x)]

    dev = jax.devices()[0]
    f32, bf16 = run(jnp.float32, dev), run(jnp.bfloat16, dev)
    out = {
        "device": dev.device_kind,
        "bf16_vs_f32": {"features": rel_error(bf16[0], f32[0]), "logits": rel_error(bf16[1], f32[1])},
    }
    if dev.platform != "cpu":
        n = 2  # the host forward pass of VGG16 is slow: two images are enough
        cpu = run(jnp.float32, jax.devices("cpu")[0], n)
        out["device_f32_vs_cpu_f32"] = {
            "features": rel_error(f32[0][:n], cpu[0]),
            "logits": rel_error(f32[1][:n], cpu[1]),
        }
    out["ok"] = all(max(out[k].values()) <= BOUNDS[k] for k in BOUNDS if k in out)
    return out


def plan(tiny: bool) -> list[tuple[str, str, int]]:
    """(variant, dtype, batch), most informative first: the budget cuts from the end."""
    if tiny:
        return [(v, d, b) for v in ("infer", "frozen", "full") for d in ("bfloat16", "float32") for b in (2, 4)]
    sweep = [("infer", "bfloat16", b) for b in (64, 128, 256, 512)]
    sweep += [("frozen", "bfloat16", b) for b in (64, 128, 256, 512)]
    sweep += [("full", "bfloat16", b) for b in (32, 64, 128)]
    sweep += [("infer", "float32", 128), ("frozen", "float32", 128), ("full", "float32", 64)]
    return sweep


def peak_memory_gb(device) -> float | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 1e9


def sweep(tiny: bool, budget_s: float, steps: int, started: float) -> list[dict]:
    import jax

    from benchmarks import throughput as bench

    rows, last_cost = [], 0.0
    for variant, dtype, batch in plan(tiny):
        left = budget_s - (time.perf_counter() - started)
        if left < 1.5 * last_cost + 5:
            rows.append({"variant": variant, "dtype": dtype, "batch": batch, "status": "skipped (time budget)"})
            continue
        t = time.perf_counter()
        try:
            case = bench.build(variant, batch, dtype, tiny=tiny)
            row = bench.measure(case, steps=steps, warmup=2)
            row["status"] = "ok"
            row["peak_mem_gb"] = peak_memory_gb(jax.devices()[0])
            del case
        except Exception as e:
            msg = str(e).splitlines()[0][:160]
            status = "OOM" if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower() else f"error: {msg}"
            row = {"variant": variant, "dtype": dtype, "batch": batch, "status": status}
        last_cost = time.perf_counter() - t
        row["wall_s"] = last_cost
        rows.append(row)
        print("ROW " + json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], device_kind: str) -> str:
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device_kind), None)
    out = [
        "| variant | dtype | batch | img/s | ms/step | TFLOP/s | MFU | compile s | peak mem GB | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            out.append(f"| {r['variant']} | {r['dtype']} | {r['batch']} | | | | | | | {r['status']} |")
            continue
        tflops = r["gflop_per_s"] / 1e3
        mfu = f"{tflops / peak[0 if r['dtype'] == 'bfloat16' else 1]:.0%}" if peak else "-"
        mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") is not None else "-"
        out.append(
            f"| {r['variant']} | {r['dtype']} | {r['batch']} | {r['img_per_s']:,.0f} | {1e3 * r['median_s']:.1f} "
            f"| {tflops:.1f} | {mfu} | {r['compile_s']:.1f} | {mem} | ok |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=270.0, help="stop starting new configurations after this")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="tiny VGG at 32x32 (CPU test)")
    p.add_argument("--json", help="write all results to this file")
    args = p.parse_args(argv)
    started = time.perf_counter()
    import jax

    devices = jax.devices()
    print(f"jax {jax.__version__}: {len(devices)} x {devices[0].device_kind} ({devices[0].platform})", flush=True)
    check = correctness(args.tiny)
    print("CORRECTNESS " + json.dumps(check), flush=True)
    rows = sweep(args.tiny, args.budget_s, args.steps, started)
    if args.json:
        Path(args.json).write_text(json.dumps({"correctness": check, "rows": rows}, indent=1))
    lines = [f"correctness ({'ok' if check['ok'] else 'FAILED'}), normwise relative error:"]
    for key, bound in BOUNDS.items():
        if key in check:
            errs = ", ".join(f"{k} {v:.1e}" for k, v in check[key].items())
            lines.append(f"  {key}: {errs} (bound {bound:.0e})")
    lines.append(f"total {time.perf_counter() - started:.0f} s on {devices[0].device_kind}")
    print("\n" + table(rows, devices[0].device_kind) + "\n" + "\n".join(lines))
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
