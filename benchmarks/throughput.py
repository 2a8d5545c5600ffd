"""`vgg-jax bench` (or `python benchmarks/throughput.py`): images/s of our own variants on this machine's devices.

Measured through the trainer's code paths. Variants (the step functions `vgg-jax train`/`evaluate` run, jitted
with the same shardings):
  infer   eval_step on uint8 images (preprocessing, backbone, head, loss, probabilities)
  frozen  train_step, everything below the head frozen (--freeze-through fc2, the recipe)
  block5  train_step, block5 + fc1 + fc2 + head trained (--freeze-through block4)
  full    train_step, every layer trained (--freeze-through none)
  naive   reference, not a library option: gradients of ALL params, then chain(adam, masked(set_to_zero))

Weights are He-scaled random numbers (shapes from `jax.eval_shape`, never a jitted init), so activations
keep ImageNet-like magnitudes; images are random uint8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.child import TINY_VGG
from benchmarks.timing import cpu_count, peak_rss_mb, timed_steps

VARIANTS = ("infer", "frozen", "block5", "full", "naive")
FREEZE = {"frozen": "fc2", "block5": "block4", "full": "none", "naive": "fc2"}
TINY = {"arch": "vgg11", "widths": TINY_VGG["widths"], "fc_units": TINY_VGG["fc_units"]}  # as TrainConfig fields
TINY_NET = {k: TINY_VGG[k] for k in ("depths", "widths", "fc_units")}  # as Classifier fields


def compiler_options(xla: str) -> dict | None:
    """Our XLA options for the default backend ("tuned", as the trainer compiles), or None for XLA's defaults."""
    from vgg_jax.train import parallel

    if xla not in ("tuned", "default"):
        raise ValueError(f"xla must be 'tuned' or 'default'. Received: {xla!r}")
    return parallel.jit_options(tuned=xla == "tuned").get("compiler_options")


@dataclass
class Case:
    """One compiled variant, ready to step: `step()` runs one step and waits for it."""

    variant: str
    batch: int
    dtype: str
    gflop_per_image: float
    compile_s: float
    trace_s: float
    step: Callable[[], None]
    args: list  # [state or trainable params, frozen params, batch]: the live arrays


def layer_macs(depths, widths, fc_units: int, image_size: int) -> list[tuple[str, float]]:
    """Multiply-adds per image of every layer, in network order (head: 1 unit)."""
    out, side, channels = [], image_size, 3
    for b, (n, width) in enumerate(zip(depths, widths), 1):
        for i in range(1, n + 1):
            out.append((f"block{b}_conv{i}", side * side * 9 * channels * width))
            channels = width
        side //= 2
    fan_in = side * side * channels
    for name in ("fc1", "fc2"):
        out.append((name, fan_in * fc_units))
        fan_in = fc_units
    out.append(("head", fan_in))
    return out


def gflop_per_image(variant: str, depths, widths, fc_units: int, image_size: int) -> float:
    """Forward, plus weight gradients of the trained layers and input gradients above the lowest trained one."""
    macs = layer_macs(depths, widths, fc_units, image_size)
    total = sum(m for _, m in macs)
    if variant != "infer":
        from vgg_jax.models.freeze import ORDER, group_of

        cut = -1 if variant == "naive" else (-1 if FREEZE[variant] == "none" else ORDER.index(FREEZE[variant]))
        trained = [i for i, (name, _) in enumerate(macs) if ORDER.index(group_of(name)) > cut]
        total += sum(macs[i][1] for i in trained) + sum(m for _, m in macs[trained[0] + 1 :])
    return 2 * total / 1e9


def he_params(model, image_size: int, seed: int = 0) -> dict:
    """Random numpy params for `model` (shapes from jax.eval_shape): He-scaled kernels, biases 0.01.

    Cached per architecture, size and seed (a sweep builds VGG16 many times); treat them as read-only.
    """
    key = (tuple(model.depths), tuple(model.widths), model.fc_units, model.top, model.head_units, image_size, seed)
    if key not in _PARAMS:
        _PARAMS.clear()  # keep one set alive: VGG16 is 553 MB
        _PARAMS[key] = _he_params(model, image_size, seed)
    return _PARAMS[key]


_PARAMS: dict = {}


def clear_params_cache() -> None:
    """Drops the cached host params (553 MB for VGG16), e.g. before measuring memory."""
    _PARAMS.clear()


def _he_params(model, image_size: int, seed: int) -> dict:
    import jax

    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    )["params"]
    rng = np.random.default_rng(seed)

    def he(s):
        if len(s.shape) == 1:
            return np.full(s.shape, 0.01, np.float32)
        return rng.standard_normal(s.shape, np.float32) * np.float32(np.sqrt(2 / np.prod(s.shape[:-1])))

    return jax.tree.map(he, shapes)


def build(variant: str, batch: int, dtype: str = "float32", tiny: bool = False, image_size: int | None = None,
          seed: int = 0, xla: str = "tuned") -> Case:  # fmt: skip
    """Compiles `variant` at `batch` images per step on all local devices (batch split over them), set up by
    the trainer's own `build_run` (He-scaled params given, an optimizer for the train variants)."""
    import jax

    from vgg_jax.models import arch
    from vgg_jax.train import parallel
    from vgg_jax.train.config import TrainConfig
    from vgg_jax.train.network import build_model
    from vgg_jax.train.setup import build_run, optimizer_for

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}. Received: {variant!r}")
    size = image_size or (32 if tiny else arch.IMAGE_SIZE)
    freeze = "none" if variant == "naive" else FREEZE.get(variant, "fc2")  # naive: differentiate everything
    cfg = TrainConfig(data="-", out="-", **(TINY if tiny else {}), image_size=size, dtype=dtype, seed=seed,
                      freeze_through=freeze)  # fmt: skip
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch, mesh, "batch")
    model = build_model(cfg, 2)
    params = jax.tree.map(np.array, he_params(model, size, seed))  # donated below: never alias the cached params
    optimizer = None if variant == "infer" else naive_optimizer if variant == "naive" else optimizer_for(cfg, 1)
    run = build_run(cfg, mesh, 2, params=params, optimizer=optimizer)
    del params
    rng = np.random.default_rng(seed + 1)
    labels = {"label": rng.integers(0, 2, batch).astype(np.int32), "mask": np.ones(batch, bool)}
    inputs = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    x = parallel.shard_batch({"inputs": inputs, **labels}, mesh)
    macs_args = (model.depths, model.widths, model.fc_units, size)
    if variant == "infer":
        fn, args = run.eval_fn(tuned=xla == "tuned"), [run.params, run.frozen, x]
    else:
        fn, args = run.step_fn(tuned=xla == "tuned"), [run.state, run.frozen, x]
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()  # the trainer's own jit options (parallel.jit_options), or XLA's defaults
    t2 = time.perf_counter()

    def step() -> None:
        out = compiled(*args)
        if variant != "infer":
            args[0] = out[0]  # the state is donated: carry it
        jax.block_until_ready(out)

    return Case(variant, batch, dtype, gflop_per_image(variant, *macs_args), t2 - t1, t1 - t0, step, args)


def naive_optimizer(params: dict):
    """The naive freeze peers use, the reference a frozen step is measured against (benchmarks/NOTES.md): Adam over ALL params, then the updates of
    the layers --freeze-through fc2 would freeze zeroed (their gradients are still computed)."""
    import jax
    import optax

    from vgg_jax.models.freeze import split

    trainable, _ = split(params, "fc2")
    mask = {k: jax.tree.map(lambda _, frozen=k not in trainable: frozen, v) for k, v in params.items()}
    return optax.chain(optax.adam(1e-3), optax.masked(optax.set_to_zero(), mask))


def measure(case: Case, steps: int = 5, warmup: int = 1) -> dict:
    """First step (after compile), `warmup` untimed steps, then `steps` timed steps; median and spread."""
    import jax

    # Any hidden host<->device copy in the timed loop is an error.
    timing = timed_steps(case.step, steps, warmup, around=lambda: jax.transfer_guard("disallow"))
    median = timing["median_s"]
    return {
        "variant": case.variant,
        "batch": case.batch,
        "dtype": case.dtype,
        "img_per_s": case.batch / median,
        "gflop_per_image": case.gflop_per_image,
        "gflop_per_s": case.gflop_per_image * case.batch / median,
        "trace_s": case.trace_s,
        "compile_s": case.compile_s,
        **timing,
    }


def environment() -> dict:
    """The devices, jax version, Python, CPUs and XLA_FLAGS this run measures."""
    import jax

    devices = jax.devices()
    return {
        "device": f"{len(devices)} x {devices[0].device_kind}",
        "platform": devices[0].platform,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpus": cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`vgg-jax bench`'s options."""
    p.add_argument("--variants", default="infer,frozen,block5,full", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--batch-sizes", default="8,32", help="global batch sizes, comma-separated")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, or both comma-separated")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    p.add_argument("--xla", choices=["tuned", "default"], default="tuned", help="our XLA:CPU flags or XLA's defaults")
    p.add_argument("--tiny", action="store_true", help="a tiny VGG at 32x32 (smoke test, seconds)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--json", help="also write the results as JSON lines to this file")


def _table(rows: list[dict]) -> str:
    head = "| variant | dtype | batch | img/s | ms/step | GFLOP/s | x infer | compile s | first step s |"
    out = [head, "|" + "---|" * 9]
    infer = {(r["dtype"], r["batch"]): r["img_per_s"] for r in rows if r["variant"] == "infer"}
    for r in rows:
        base = infer.get((r["dtype"], r["batch"]))
        ratio = f"{r['img_per_s'] / base:.2f}" if base else "-"
        out.append(
            f"| {r['variant']} | {r['dtype']} | {r['batch']} | {r['img_per_s']:,.2f} | {1e3 * r['median_s']:,.1f} "
            f"| {r['gflop_per_s']:,.1f} | {ratio} "
            f"| {r['compile_s']:.2f} | {r['first_step_s']:.2f} |"
        )
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Builds and measures every (dtype, batch, variant) case; prints a table, appends JSON lines to --json."""
    from vgg_jax.errors import UserError

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    try:
        batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--batch-sizes expects integers like 8,32. Received: {args.batch_sizes!r}") from None
    if bad := [v for v in variants if v not in VARIANTS]:
        raise UserError(f"--variants: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    if bad := [d for d in dtypes if d not in ("float32", "bfloat16")]:
        raise UserError(f"--dtype must be float32 and/or bfloat16. Received: {', '.join(bad)}")
    env = {**environment(), "xla": args.xla}
    print(f"{env['device']} ({env['platform']}), jax {env['jax']}, {env['cpus']} CPUs, XLA options: {args.xla}")
    rows = []
    for dtype in dtypes:
        for batch in batches:
            for variant in variants:
                case = build(variant, batch, dtype, tiny=args.tiny, image_size=args.image_size, xla=args.xla)
                row = {**measure(case, args.steps, args.warmup), **env}
                row["peak_rss_mb"] = peak_rss_mb()
                rows.append(row)
                print(
                    f"  {variant:7s} {dtype:8s} b{batch:<4d} {row['img_per_s']:10,.2f} img/s"
                    f"  (compile {row['compile_s']:.2f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                del case
    print(_table(rows))
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`vgg-jax bench ARGS` lands here: parses ARGS and runs the cases."""
    parser = argparse.ArgumentParser(prog="vgg-jax bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
