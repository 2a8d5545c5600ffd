"""The feature cache measured through the trainer itself: cached epochs per cut, the recipe end to end against
Keras, and the block5 fine-tune with and without the block4_pool cache. One run, the same generated images.

    .venv/bin/python benchmarks/bench_cache.py [--train 128] [--valid 32] [--epochs 10] [--tiny] [--skip-keras]

Every figure comes from `vgg_jax.train.trainer.train` on real JPEG files: epoch times are read by wrapping the trainer's
own `_run_epoch` (host gather from the memory-mapped cache, transfer, step, loop; validation excluded), the
one-time backbone pass by wrapping `feed.cached_features`, and end-to-end times are the wall time of `train()`
from an empty cache. Weights are random (timing does not depend on their values; the ImageNet file cannot be
downloaded here). Keras runs benchmarks/peers_recipe_keras.py (Keras 3 / TF, the recipe's script) as a child.
Writes benchmarks/cache_results.json and benchmarks/CACHE_RESULTS.md, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from vgg_jax.data.synthetic import write_folder
from vgg_jax.train import feed, trainer
from vgg_jax.train.config import TrainConfig

TINY = {"arch": "vgg11", "widths": (8, 8, 16, 16, 16), "fc_units": 32, "image_size": 32}
# (name, config changes, cache on?): every cut the trainer caches by default, and the runs through the backbone.
CUTS = [
    ("recipe: fc1 cut (dropout 0.5)", {}, True),
    ("recipe, --dropout 0: fc2 cut", {"dropout": 0.0}, True),
    ("fc1+fc2+head: block5_pool cut", {"freeze_through": "block5"}, True),
    ("--top avg: block5_pool cut", {"top": "avg"}, True),
    ("--top mlp:256: block5_pool cut", {"top": "mlp:256"}, True),
    ("block5 fine-tune: block4_pool cut", {"freeze_through": "block4"}, True),
    ("recipe through the backbone (images)", {}, False),
    ("block5 fine-tune through the backbone", {"freeze_through": "block4"}, False),
]


class Timer:
    """Wraps the trainer's epoch loop and feature pass to record their wall times."""

    def __init__(self):
        self.epochs: list[float] = []
        self.feature_pass: list[float] = []
        self._run_epoch, self._cached = trainer._run_epoch, feed.cached_features

    def __enter__(self):
        def run_epoch(*args, **kwargs):
            t0 = time.perf_counter()
            state = self._run_epoch(*args, **kwargs)
            import jax

            jax.block_until_ready(state.params)
            self.epochs.append(time.perf_counter() - t0)
            return state

        def cached(*args, **kwargs):
            t0 = time.perf_counter()
            out = self._cached(*args, **kwargs)
            self.feature_pass.append(time.perf_counter() - t0)
            return out

        trainer._run_epoch, feed.cached_features = run_epoch, cached
        return self

    def __exit__(self, *exc):
        trainer._run_epoch, feed.cached_features = self._run_epoch, self._cached


def run_ours(
    data: Path, work: Path, name: str, changes: dict, cache: bool, epochs: int, shape: dict, batch: int
) -> dict:
    """One train() from an empty cache; per-epoch times, the feature pass and the whole wall time."""
    os.environ["VGG_JAX_CACHE"] = str(Path(tempfile.mkdtemp(dir=work, prefix="cache-")))
    cfg = TrainConfig(data=str(data), out=str(Path(tempfile.mkdtemp(dir=work, prefix="run-")) / "run"),
                      epochs=epochs, batch_size=batch, cache_features=cache, **shape, **changes)  # fmt: skip
    t0 = time.perf_counter()
    with Timer() as timer:
        result = trainer.train(cfg)
    wall = time.perf_counter() - t0
    steady = timer.epochs[1:] or timer.epochs
    row = {"name": name, "changes": changes, "cache": cache, "epochs": epochs, "wall_s": wall,
           "feature_pass_s": sum(timer.feature_pass), "epoch_s": timer.epochs,
           "steady_epoch_s": sorted(steady)[len(steady) // 2], "valid_accuracy": result["accuracy"]}  # fmt: skip
    print("RESULT " + json.dumps(row), flush=True)
    return row


def run_keras(data: Path, epochs: int, batch: int, tiny: bool) -> dict | None:
    """benchmarks/peers_recipe_keras.py as a child; None when Keras/TF are not installed."""
    script = Path(__file__).with_name("peers_recipe_keras.py")
    argv = [sys.executable, str(script), "--data", str(data), "--epochs", str(epochs), "--batch", str(batch)]
    proc = subprocess.run(argv + (["--tiny"] if tiny else []), capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"keras child failed (rc {proc.returncode}): {proc.stderr[-800:]}", file=sys.stderr)
        return None
    row = json.loads(lines[-1][len("RESULT ") :])
    print("RESULT " + json.dumps({"name": f"keras {epochs} epoch(s)", **row}), flush=True)
    return row


def table(rows: list[dict], recipe: dict, keras: dict, train_images: int) -> str:
    image_epoch = next(r for r in rows if r["name"].startswith("recipe through"))["steady_epoch_s"]
    block5_direct = next(r for r in rows if r["name"] == "block5 fine-tune through the backbone")["steady_epoch_s"]
    lines = ["| run | one-time feature pass s | epoch s (after the first) | img/s per epoch | x image epoch |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        speedup = image_epoch / r["steady_epoch_s"]
        lines.append(f"| {r['name']} | {r['feature_pass_s']:.1f} | {r['steady_epoch_s']:.3f} | "
                     f"{train_images / r['steady_epoch_s']:,.0f} | {speedup:,.1f} |")  # fmt: skip
    block5_cached = next(r for r in rows if r["name"].startswith("block5 fine-tune: block4"))["steady_epoch_s"]
    lines += ["", (f"Block5 fine-tune, epochs after the first: through the backbone {block5_direct:.1f} s, "
              f"from the block4_pool cache {block5_cached:.1f} s ({block5_direct / block5_cached:.1f}x)."), "",
              "| recipe end to end (wall s, from an empty cache) | 1 epoch | 10 epochs |", "|---|---|---|"]  # fmt: skip
    for name, by_epochs in (("vgg-jax (cache on)", recipe), ("Keras 3 / TF, the recipe's script", keras)):
        cells = [f"{by_epochs[e]:.1f}" if by_epochs.get(e) is not None else "not run" for e in (1, 10)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=128, help="training images per class")
    p.add_argument("--valid", type=int, default=32, help="validation images per class")
    p.add_argument("--epochs", type=int, default=3, help="epochs per cut run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tiny", action="store_true", help="a small VGG11 at 32x32 (a smoke run in seconds)")
    p.add_argument("--skip-keras", action="store_true")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=str(Path(__file__).with_name("cache_results.json")))
    p.add_argument("--markdown", default=str(Path(__file__).with_name("CACHE_RESULTS.md")), help="'' to skip")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vgg-jax-bench-cache-"))
    data = write_folder(work / "data", train=args.train, valid=args.valid, test=0, seed=0, size=(375, 500))
    shape = TINY if args.tiny else {}
    rows = [run_ours(data, work, name, changes, cache, args.epochs, shape, args.batch) for name, changes, cache in CUTS]
    recipe = {e: run_ours(data, work, f"recipe e2e {e}", {}, True, e, shape, args.batch)["wall_s"] for e in (1, 10)}
    keras = {}
    if not args.skip_keras:
        for e in (1, 10):
            row = run_keras(data, e, args.batch, args.tiny)
            keras[e] = row and row["fit_s"] + row["build_s"]
    import jax

    report = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "jax": jax.__version__, "tiny": args.tiny,
              "train_images": 2 * args.train, "valid_images": 2 * args.valid, "batch": args.batch, "rows": rows,
              "recipe_e2e_s": recipe, "keras_e2e_s": keras}  # fmt: skip
    Path(args.json).write_text(json.dumps(report, indent=1))
    text = table(rows, recipe, keras, 2 * args.train)
    print(text)
    if args.markdown:
        header = (f"# Feature cache: cached epochs per cut, the recipe end to end\n\nCommand: `{report['command']}` "
                  f"({report['date']}). Machine: {report['machine']}, {report['cpus']} CPUs, jax {report['jax']}. "
                  f"{report['train_images']} train + {report['valid_images']} valid generated 500x375 JPEGs, batch "
                  f"{args.batch}, {'VGG11 small' if args.tiny else 'VGG16 at 224x224'}, float32, random weights. "
                  "Epoch s = the trainer's own epoch loop (gather from the memory-mapped cache, transfer, step), "
                  "median of the epochs after the first; the one-time feature pass is shown apart. End to end = "
                  "wall time of `train()` from an empty cache (Keras: build + `fit`).\n\n")  # fmt: skip
        Path(args.markdown).write_text(header + text + "\n")


if __name__ == "__main__":
    main()
