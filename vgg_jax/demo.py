"""The README's main job: port VGG16 weights to Flax and prove parity, offline if need be.

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
    from convert import download, legacy

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
    from convert import convert_file, parity
    from vgg_jax import params_io

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{RULE}\nvgg-jax demo: port VGG16 weights to Flax, then check parity\n{RULE}")
    source, how = resolve_weights(weights, out, offline)
    print(f"weights: {source} ({how})\n")
    start = time.perf_counter()
    params_path = out / "vgg16.safetensors"
    report = convert_file(source, params_path)
    print(report)
    print(f"converted in {time.perf_counter() - start:.1f} s\n")

    batch = np.random.default_rng(0).integers(0, 256, (images, 224, 224, 3), dtype=np.uint8)
    print(f"parity on {images} random 224x224 images: Flax float32 vs a float64 numpy forward that reads {source.name}")
    print("as stored, in its own convention (layout, convolution vs correlation, flatten order):")
    start = time.perf_counter()
    rows = parity.check(source, params_io.load(params_path), batch)
    print(parity.format_rows(rows))
    ok = all(r.ok for r in rows)
    print(f"checked in {time.perf_counter() - start:.1f} s")
    print(f"\nresult: {'PASS' if ok else 'FAIL'}{'  (random weights)' if 'RANDOM' in how else ''}")
    print(f"params: {params_path}")
    print(f"next:   vgg-jax classify IMAGE.jpg --weights {params_path}")
    return 0 if ok else 1
