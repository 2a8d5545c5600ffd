"""The README's main job, the whole recipe offline: port VGG16 weights to Flax and prove parity, train
the recipe's new head on a generated two-class image folder, evaluate, predict.

Uses the weights a user has (a file, or the official download, cached); with neither file nor
network it falls back to clearly labelled random weights in the original recipe's Theano layout.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from vgg_jax.errors import UserError

RULE = "-" * 78


def resolve_weights(weights: str | None, out: Path, offline: bool) -> tuple[Path, str]:
    """(weights file, how it was found). Order: argument, $VGG_JAX_WEIGHTS, cache, download, random."""
    from vgg_jax.convert import download, legacy

    if weights or (weights := os.environ.get("VGG_JAX_WEIGHTS")):
        return Path(weights), "given"
    if found := download.cached("vgg16"):
        return found, "official Keras ImageNet file, cached"
    reason = "offline mode (--offline)"
    if not offline:
        try:
            return download.fetch("vgg16", timeout=15), "official Keras ImageNet file, downloaded"
        except UserError as e:
            reason = str(e).split(";")[0]
    path = out / "random_vgg16_th.h5"
    print(f"no weights file and no network ({reason}).")
    print("USING RANDOM WEIGHTS: the numbers below check the port itself, not ImageNet accuracy.")
    print(f"writing random VGG16 weights in the Keras 0.x Theano layout of the original recipe: {path}")
    legacy.write_keras0(path, legacy.random_params(seed=0))
    return path, "RANDOM weights (Keras 0.x Theano layout)"


def run(
    weights: str | None = None, out: str | os.PathLike = "runs/demo", offline: bool = False, images: int = 2
) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{RULE}\nvgg-jax demo: the 2017 VGG16 transfer-learning recipe, offline\n{RULE}")
    print("1. port the weights to Flax and check parity")
    source, how = resolve_weights(weights, out, offline)
    print(f"weights: {source} ({how})\n")
    params_path, ok = port(source, out, images)
    if not ok:
        return 1
    if "RANDOM" in how:
        mark_random(params_path)
    print(f"\n{RULE}\n2. train the recipe's new head (everything else frozen) on a generated two-class folder\n{RULE}")
    recipe(params_path, out, random="RANDOM" in how)
    return 0


def port(source: Path, out: Path, images: int) -> tuple[Path, bool]:
    from vgg_jax.convert import convert_file
    from vgg_jax.models import params_io, parity

    start = time.perf_counter()
    params_path = out / "vgg16.safetensors"
    report = convert_file(source, params_path)
    print(report)
    print(f"converted in {time.perf_counter() - start:.1f} s\n")
    batch = np.random.default_rng(0).integers(0, 256, (images, 224, 224, 3), dtype=np.uint8)
    print(f"parity on {images} random 224x224 images of {source.name}: {parity.HEADLINE}:")
    start = time.perf_counter()
    rows = parity.check(source, params_io.load(params_path), batch)
    print(parity.format_rows(rows))
    ok = all(r.ok for r in rows)
    print(f"checked in {time.perf_counter() - start:.1f} s: {'PASS' if ok else 'FAIL'}")
    return params_path, ok


def mark_random(params_path: Path) -> None:
    """Records "weights": "random" in the params file's metadata: every command then labels its backbone RANDOM."""
    from vgg_jax.models import params_io

    meta = {k: v for k, v in params_io.read_metadata(params_path).items() if k != "format"}
    params_io.save(params_path, params_io.load(params_path), {**meta, "weights": "random"})


def recipe(params_path: Path, out: Path, random: bool) -> None:
    from vgg_jax.data.synthetic import write_folder
    from vgg_jax.inference.evaluate import evaluate, predict
    from vgg_jax.train.config import TrainConfig
    from vgg_jax.train.trainer import train

    data = out / "data"
    if not (data / "train").exists():
        write_folder(data, train=24, valid=8, test=8, seed=0, size=(160, 200))
        print(f"generated {data}: train/{{cats,dogs}} 24 JPEGs each, valid/ 8 each, test1/ 8 unlabelled")
    run_dir = out / "run"
    cfg = TrainConfig(data=str(data), out=str(run_dir), weights=str(params_path), epochs=3, batch_size=8)
    train(cfg, overwrite=True)
    print(f"\n{RULE}\n3. evaluate and predict\n{RULE}")
    evaluate(run_dir)
    csv = predict(run_dir, str(data / "test1"), str(run_dir / "submission.csv"), clip=0.05)
    print(f"\n{RULE}")
    if random:
        print(
            "NOTE: the backbone had RANDOM weights (no weights file, no network); accuracy here says nothing about ImageNet."
        )
    print(f"done. params: {params_path}")
    print(f"      run:    {run_dir} (run.json, metrics.jsonl, curves.png, checkpoints/)")
    print(f"      kaggle: {csv}")
    print(f"next: vgg-jax train --data data/dogscats --weights {params_path} --out runs/dogscats")
