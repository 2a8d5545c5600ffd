"""Input pipeline throughput: decoded 224x224 images/s from real-size JPEGs at 1, 2 and all cores, beside the step rate.

    .venv/bin/python benchmarks/bench_data.py [--workdir /tmp/vgg-jax-bench-data] [--skip-step]

Generates (once) 500x375 quality-90 JPEGs with photo-like content, then measures:
  - check: the structural broken-file check, microseconds per file (what open_source pays upfront);
  - tf.data: vgg_jax.data.train_batches (the real pipeline) with a private pool of N threads;
  - pillow: the alternative it was chosen over, Pillow decode + bilinear resize in N Python threads;
  - step: the real frozen-head train step (vgg_jax.step.train_step, the recipe's freeze policy) on VGG16
    at 224x224, batch 8, He-scaled random params, on this machine's CPU.
Prints one JSON line per measurement, then a markdown table with ratio = pipeline img/s / step img/s
and the ratio projected for a GPU step of --gpu-rate img/s. CPU ms/img and the load average show
whether another process shared the cores (the machine has 2; wall-clock rates drop under contention).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgg_jax import data  # noqa: E402
from vgg_jax.data.checks import check_image_file  # noqa: E402
from vgg_jax.data.decode import default_threads  # noqa: E402


def generate(folder: Path, count: int) -> list[Path]:
    """`count` 500x375 JPEGs (quality 90) of smooth colour fields plus grain: about 65 KB each, like photos."""
    from PIL import Image

    marker = folder / f".done-{count}"
    paths = [folder / "train" / ("cats", "dogs")[i % 2] / f"{i}.jpg" for i in range(count)]
    if marker.exists():
        return paths
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        mid = Image.fromarray(rng.integers(0, 256, (94, 125, 3), dtype=np.uint8)).resize((500, 375), Image.BILINEAR)
        x = 0.7 * np.asarray(coarse, np.float32) + 0.3 * np.asarray(mid, np.float32) + rng.normal(0, 6, (375, 500, 3))
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path, quality=90)
    marker.touch()
    return paths


def timed(fn, items: int, repeats: int) -> dict:
    """Best-of-`repeats` wall rate (least disturbed by other processes) and the CPU time per item."""
    walls, cpus = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    best = int(np.argmin(walls))
    return {
        "img_per_s": round(items / walls[best], 1),
        "cpu_ms_per_img": round(1e3 * cpus[best] / items, 3),
        "util": round(cpus[best] / walls[best], 2),
    }


def bench_check(paths: list[Path]) -> dict:
    for p in paths:
        check_image_file(p)  # warm the page cache like the decoders' warm-up epoch
    t = time.perf_counter()
    for p in paths:
        check_image_file(p)
    return {"what": "check", "us_per_file": round(1e6 * (time.perf_counter() - t) / len(paths), 1)}


def bench_tfdata(source, threads: int, batch: int, epochs: int, repeats: int) -> dict:
    def run(n=epochs):
        for epoch in range(n):
            for b in data.train_batches(source, batch, seed=0, epoch=epoch, threads=threads):
                assert b["image"].shape == (batch, 224, 224, 3)

    run(1)  # warm-up: TF import, graph building, page cache
    n = data.steps_per_epoch(source, batch) * batch * epochs
    return {"what": "tf.data", "threads": threads, **timed(run, n, repeats)}


def bench_pillow(paths: list[Path], threads: int, epochs: int, repeats: int) -> dict:
    from PIL import Image

    def decode(path: Path) -> np.ndarray:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            im.draft("RGB", (224, 224))  # DCT-domain downscale when the JPEG is at least 2x larger
            return np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, paths))
        result = timed(lambda: [list(pool.map(decode, paths)) for _ in range(epochs)], len(paths) * epochs, repeats)
    return {"what": "pillow", "threads": threads, **result}


def bench_step(batch: int, iters: int) -> dict:
    """The real frozen-head train step (the recipe: VGG16, everything but the head frozen, Adam) on uint8
    224x224 batches, with He-scaled random params so activations keep ImageNet-like magnitudes."""
    from functools import partial

    import jax

    from vgg_jax.classifier import Classifier, image_apply_fn
    from vgg_jax.freeze import split
    from vgg_jax.optim import make_optimizer
    from vgg_jax.step import create_state, train_step

    model = Classifier()
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32))["params"]
    rng = np.random.default_rng(1)

    def he(s):
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return rng.standard_normal(s.shape, np.float32) * np.float32(np.sqrt(2 / fan_in) if len(s.shape) > 1 else 0.1)

    trainable, frozen = split(jax.tree.map(he, shapes), "fc2")
    tx = make_optimizer(trainable)
    step = jax.jit(partial(train_step, apply_fn=image_apply_fn(model), tx=tx), donate_argnums=0)
    state, frozen = create_state(trainable, tx, 0), jax.device_put(frozen)
    images = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    x = jax.device_put({"inputs": images, "label": np.zeros(batch, np.int32), "mask": np.ones(batch, bool)})
    t = time.perf_counter()
    state, m = step(state, frozen, x)
    jax.block_until_ready(m)
    first = time.perf_counter() - t
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        state, m = step(state, frozen, x)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return {
        "what": "step",
        "step": "vgg_jax.step.train_step, VGG16 frozen through fc2 (the recipe), Adam, float32",
        "batch": batch,
        "img_per_s": round(batch / float(np.median(times)), 2),
        "s_per_step": round(float(np.median(times)), 3),
        "first_call_s": round(first, 2),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/vgg-jax-bench-data")
    p.add_argument("--count", type=int, default=400, help="JPEGs to generate (once)")
    p.add_argument("--batch", type=int, default=32, help="pipeline batch size")
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (best is kept)")
    p.add_argument("--threads", default="1,2,all", help="comma-separated thread counts; 'all' = cores available")
    p.add_argument("--skip-step", action="store_true", help="do not measure the VGG16 forward (about 20 s on 2 cores)")
    p.add_argument("--step-batch", type=int, default=8)
    p.add_argument("--step-iters", type=int, default=3)
    p.add_argument("--gpu-rate", type=float, default=5000.0, help="GPU step rate (img/s) for the projected ratio")
    args = p.parse_args(argv)

    cores = default_threads()
    threads = sorted({cores if t == "all" else int(t) for t in args.threads.split(",")})
    folder = Path(args.workdir) / "jpeg"
    paths = generate(folder, args.count)
    source = data.open_source(folder, "train")
    meta = {
        "cores": cores,
        "images": source.num_examples,
        "image": "500x375 JPEG q90",
        "mean_kb": round(np.mean([q.stat().st_size for q in paths]) / 1e3, 1),
    }
    print(json.dumps({"what": "setup", **meta}), flush=True)
    rows = [bench_check(paths)]
    print(json.dumps(rows[0]), flush=True)
    for n in threads:
        for row in (
            bench_tfdata(source, n, args.batch, args.epochs, args.repeats),
            bench_pillow(paths, n, args.epochs, args.repeats),
        ):
            row["loadavg_1m"] = round(os.getloadavg()[0], 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    step = None if args.skip_step else bench_step(args.step_batch, args.step_iters)
    if step:
        print(json.dumps(step), flush=True)
    print(table(rows, step, args.gpu_rate))


def table(rows: list[dict], step: dict | None, gpu_rate: float) -> str:
    check = rows[0]
    out = [f"structural check: {check['us_per_file']} us/file (warm cache)", ""]
    step_rate = step["img_per_s"] if step else None
    out.append(
        f"| decoder | threads | img/s | CPU ms/img | CPU util | ratio to CPU step ({step_rate or 'n/a'} img/s) | ratio at GPU {gpu_rate:,.0f} img/s |"
    )
    out.append("|---|---|---|---|---|---|---|")
    for r in rows[1:]:
        ratio = f"{r['img_per_s'] / step_rate:,.0f}x" if step_rate else "n/a"
        out.append(
            f"| {r['what']} | {r['threads']} | {r['img_per_s']:,.0f} | {r['cpu_ms_per_img']} | {r['util']} | {ratio} | {r['img_per_s'] / gpu_rate:.2f}x |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
