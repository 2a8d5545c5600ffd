"""Input pipeline throughput, side by side on the same files in one run: grain (vgg_jax.data) vs the tf.data pipeline
it replaced, decoded 224x224 images/s from real-size JPEGs.

    .venv/bin/python benchmarks/bench_data.py [--workdir /tmp/vgg-jax-bench-data] [--json out.json] [--md out.md]

Generates (once) 500x375 quality-90 JPEGs with photo-like content, then measures, interleaved, each
configuration `--repeats` times (best kept, least disturbed by other processes):
  - grain: vgg_jax.data.train_batches (the real pipeline) with 1 and 2 worker processes, and in-process
    with 1 and 2 threads;
  - tf.data (only when tensorflow is installed): the pipeline vgg_jax.data ran before grain, kept here
    for this comparison only: tf.data from_tensor_slices -> read_file -> a numpy_function that decodes
    with Pillow and resizes with vgg_jax.data.resize -> batch -> prefetch, a private pool of N threads;
  - tf.data + simplejpeg: the same tf.data pipeline calling today's decoder, to separate the
    decoder's share of the difference from the framework's.
Steady rate: images after the first batch / time from the first batch to the last (worker start-up
and tf.data graph building excluded); `startup_s` is the time to the first batch. CPU time includes
worker processes. Prints one JSON line per measurement, then a markdown table, and the ratios that the
targets are about: grain 1 worker / tf.data 1 thread (per core) and grain 2 workers / 1 worker.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import load_1m, process_cpu_s
from vgg_jax import data
from vgg_jax.data.decode import default_threads

SIZE = 224


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


def measure(batches, batch: int) -> dict:
    """Steady rate of one pass over `batches`, its start-up time and CPU per image."""
    c0, t0 = process_cpu_s(), time.perf_counter()
    it = iter(batches)
    first = next(it)
    assert first["image"].shape == (batch, SIZE, SIZE, 3)
    t1, n = time.perf_counter(), 0
    for b in it:
        n += len(b["image"])
    t2 = time.perf_counter()
    del it
    total = n + batch
    return {
        "img_per_s": round(n / (t2 - t1), 1),
        "startup_s": round(t1 - t0, 2),
        "cpu_ms_per_img": round(1e3 * (process_cpu_s() - c0) / total, 3),
        "images": total,
    }


def grain_batches(source, batch: int, workers: int, threads: int | None):
    return data.train_batches(source, batch, image_size=SIZE, seed=0, workers=workers, threads=threads)


def tfdata_batches(source, batch: int, threads: int, decoder: str):
    """The tf.data pipeline vgg_jax.data ran before grain (vgg_jax/data_decode.py), for this comparison only."""
    from vgg_jax.data import resize
    from vgg_jax.data.tfds import _tf

    tf = _tf()
    if decoder == "pillow":  # what resize.decode_resize was then: Pillow's decoder, then resize.resize
        from PIL import Image

        def decode(blob: bytes) -> np.ndarray:
            return resize.resize(Image.open(io.BytesIO(blob)).convert("RGB"), SIZE, "squash", "nearest")
    else:

        def decode(blob: bytes) -> np.ndarray:
            return resize.decode_resize(blob, SIZE, "squash", "nearest")

    def load(ex: dict) -> dict:
        image = tf.numpy_function(decode, [tf.io.read_file(ex["path"])], tf.uint8, stateful=False)
        image.set_shape([SIZE, SIZE, 3])
        return {"image": image, "label": ex["label"]}

    order = data.permutation(source.num_examples, 0, 0)
    ds = tf.data.Dataset.from_tensor_slices(
        {"path": [source.paths[i] for i in order], "label": source.labels[order].astype("int32")}
    )
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options).as_numpy_iterator()


def configurations(source, batch: int, with_tf: bool) -> dict:
    """name -> (pipeline, parallelism, worker processes, a function giving one pass of batches)."""
    configs = {
        "grain 1 worker": ("grain", "1 worker", 1, lambda: grain_batches(source, batch, 1, None)),
        "grain 2 workers": ("grain", "2 workers", 2, lambda: grain_batches(source, batch, 2, None)),
        "grain 1 thread": ("grain", "1 thread (in process)", 0, lambda: grain_batches(source, batch, 0, 1)),
        "grain 2 threads": ("grain", "2 threads (in process)", 0, lambda: grain_batches(source, batch, 0, 2)),
    }
    if with_tf:
        for n in (1, 2):
            s = "s" if n > 1 else ""
            for name, pipeline, decoder in (
                ("tf.data", "tf.data + Pillow (replaced)", "pillow"),
                ("tf.data+simplejpeg", "tf.data + simplejpeg", "new"),
            ):
                run = lambda n=n, d=decoder: tfdata_batches(source, batch, n, d)
                configs[f"{name} {n} thread{s}"] = (pipeline, f"{n} thread{s}", 0, run)
    return configs


def worker_startup_cpu_s(source, batch: int, repeats: int) -> float:
    """CPU seconds one grain worker costs to start (spawn, imports, unpickling): a one-batch pass with 2 workers
    minus the same pass in process, halved; the median of `repeats`."""
    from vgg_jax.data.batching import _grain_batches
    from vgg_jax.data.decode import Loader

    loader = Loader(source.paths, source.labels, SIZE, "squash", "nearest")
    plan = np.arange(batch)

    def cpu(workers: int) -> float:
        c = process_cpu_s()
        for _ in _grain_batches(loader, plan, batch, 1, workers):
            pass
        return process_cpu_s() - c

    return float(np.median([(cpu(2) - cpu(0)) / 2 for _ in range(repeats)]))


def _has_tensorflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/vgg-jax-bench-data")
    p.add_argument("--count", type=int, default=1200, help="JPEGs to generate (once)")
    p.add_argument("--batch", type=int, default=32, help="pipeline batch size")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per configuration, interleaved (best kept)")
    p.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    p.add_argument("--json", help="write the rows and ratios here")
    p.add_argument("--md", help="write the markdown table here")
    args = p.parse_args(argv)

    folder = Path(args.workdir) / "jpeg"
    paths = generate(folder, args.count)
    source = data.open_source(folder, "train")
    with_tf = _has_tensorflow()
    configs = configurations(source, args.batch, with_tf)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    meta = {
        "cores": default_threads(),
        "cpu": _cpu_name(),
        "images": source.num_examples,
        "image": "500x375 JPEG q90 -> 224x224 squash nearest",
        "mean_kb": round(np.mean([q.stat().st_size for q in paths]) / 1e3, 1),
        "tensorflow": with_tf,
        "python": platform.python_version(),
    }
    print(json.dumps({"what": "setup", **meta}), flush=True)
    for *_, run in configs.values():  # warm-up: page cache, TF graph building, imports
        for _ in run():
            pass
    startup = worker_startup_cpu_s(source, args.batch, args.repeats)
    meta["worker_startup_cpu_s"] = round(startup, 3)
    print(json.dumps({"what": "worker start-up", "cpu_s": meta["worker_startup_cpu_s"]}), flush=True)
    best: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for name, (pipeline, parallelism, workers, run) in configs.items():
            row = {"what": name, "pipeline": pipeline, "parallelism": parallelism, "repeat": repeat,
                   **measure(run(), args.batch), "loadavg_1m": load_1m()}  # fmt: skip
            # Per core, robust to other processes on the machine: CPU per image once the workers run.
            row["steady_cpu_ms_per_img"] = round(row["cpu_ms_per_img"] - 1e3 * workers * startup / row["images"], 3)
            print(json.dumps(row), flush=True)
            if name not in best or row["img_per_s"] > best[name]["img_per_s"]:
                best[name] = row
    ratios = _ratios(best)
    md = table(meta, best, ratios)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": meta, "best": best, "ratios": ratios}, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(md + "\n")


def _ratios(best: dict) -> dict:
    def ratio(a: str, b: str) -> float | None:
        return round(best[a]["img_per_s"] / best[b]["img_per_s"], 2) if a in best and b in best else None

    def per_cpu_second(a: str, b: str) -> float | None:
        if a not in best or b not in best:
            return None
        return round(best[b]["steady_cpu_ms_per_img"] / best[a]["steady_cpu_ms_per_img"], 2)

    return {
        "per_cpu_second_grain_1_worker_over_tfdata_1_thread": per_cpu_second("grain 1 worker", "tf.data 1 thread"),
        "per_cpu_second_grain_1_thread_over_tfdata_1_thread": per_cpu_second("grain 1 thread", "tf.data 1 thread"),
        "per_cpu_second_grain_2_workers_over_1_worker": per_cpu_second("grain 2 workers", "grain 1 worker"),
        "grain_1_worker_over_tfdata_1_thread": ratio("grain 1 worker", "tf.data 1 thread"),
        "grain_1_thread_over_tfdata_1_thread": ratio("grain 1 thread", "tf.data 1 thread"),
        "grain_2_workers_over_1_worker": ratio("grain 2 workers", "grain 1 worker"),
        "grain_2_threads_over_1_thread": ratio("grain 2 threads", "grain 1 thread"),
        "tfdata_2_threads_over_1_thread": ratio("tf.data 2 threads", "tf.data 1 thread"),
        "grain_2_workers_over_tfdata_2_threads": ratio("grain 2 workers", "tf.data 2 threads"),
    }


def table(meta: dict, best: dict, ratios: dict) -> str:
    out = [
        (
            f"{meta['images']} images ({meta['image']}, {meta['mean_kb']} KB mean), {meta['cores']} cores"
            f" ({meta['cpu']}); best of the interleaved repeats"
        ),
        "",
        f"worker start-up: {meta['worker_startup_cpu_s']} CPU s each (spawn, imports, unpickling), every pass",
        "",
        (
            "| pipeline | parallelism | img/s (steady, wall) | start-up s | CPU ms/img (all) | CPU ms/img (running)"
            " | img/s per CPU-second | load avg |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in best.values():
        out.append(
            f"| {r['pipeline']} | {r['parallelism']} | {r['img_per_s']:,.0f} | {r['startup_s']} | {r['cpu_ms_per_img']}"
            f" | {r['steady_cpu_ms_per_img']} | {1e3 / r['steady_cpu_ms_per_img']:,.0f} | {r['loadavg_1m']} |"
        )
    out += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in ratios.items() if v is not None]
    return "\n".join(out)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
