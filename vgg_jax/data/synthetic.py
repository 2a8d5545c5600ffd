"""A generated two-class image folder in the recipe's layout, for the offline demo and the tests.

ROOT/train/{cats,dogs}/*.jpg, ROOT/valid/{cats,dogs}/*.jpg, ROOT/test1/<id>.jpg: real JPEG files
on disk, the classes visibly different (warm discs vs cool stripes) with random size, position,
colour jitter and noise, so learning them is easy but not trivial.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CLASSES = ("cats", "dogs")


def draw(label: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3]: class 0 = a warm disc on a noisy background, class 1 = cool diagonal stripes."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    image = rng.normal(110, 35, (h, w, 3))
    if label == 0:
        cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.35) * min(h, w)
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        colour = np.array([rng.uniform(180, 255), rng.uniform(60, 140), rng.uniform(0, 60)])
    else:
        period = rng.uniform(0.08, 0.2) * min(h, w)
        shape = ((yy + xx * rng.uniform(0.5, 1.5)) // period) % 2 == 0
        colour = np.array([rng.uniform(0, 60), rng.uniform(60, 140), rng.uniform(180, 255)])
    image[shape] = 0.35 * image[shape] + 0.65 * colour
    return np.clip(image, 0, 255).astype(np.uint8)


def write_folder(
    root: str | os.PathLike,
    train: int = 40,
    valid: int = 16,
    test: int = 10,
    seed: int = 0,
    size: tuple[int, int] = (96, 128),
) -> Path:
    """Writes `train`/`valid` images per class and `test` unlabelled ones; returns root."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("valid", valid)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                hw = (int(size[0] * rng.uniform(0.8, 1.2)), int(size[1] * rng.uniform(0.8, 1.2)))
                Image.fromarray(draw(label, rng, hw)).save(folder / f"{name[:-1]}.{i}.jpg", quality=90)
    (root / "test1").mkdir(parents=True, exist_ok=True)
    for i in range(1, test + 1):
        Image.fromarray(draw(int(rng.integers(2)), rng, size)).save(root / "test1" / f"{i}.jpg", quality=90)
    return root
