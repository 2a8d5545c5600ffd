"""Decode one image file to uint8 RGB with Pillow (no tensorflow), for `classify` and small jobs."""

from __future__ import annotations

import os

import numpy as np

from vgg_jax.errors import UserError


def load_image(path: str | os.PathLike, size: int | None = 224) -> np.ndarray:
    """Any Pillow-readable file (JPEG incl. CMYK/grayscale, PNG with alpha, ...) -> uint8 [size, size, 3] RGB.

    Resizes with nearest-neighbour, like `keras.utils.load_img(path, target_size=(size, size))`,
    so a Keras user's numbers can be reproduced exactly.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.NEAREST)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: cannot decode image ({e})") from None
