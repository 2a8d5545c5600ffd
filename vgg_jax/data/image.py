"""Decode one image file to uint8 RGB (no tensorflow), for `classify` and small jobs: vgg_jax.data.resize."""

from __future__ import annotations

import os

import numpy as np

from vgg_jax.data.resize import DecodeError, check_options, decode, decode_resize
from vgg_jax.data.source import printable
from vgg_jax.errors import UserError


def load_image(
    path: str | os.PathLike, size: int | None = 224, resize: str = "squash", interpolation: str = "nearest"
) -> np.ndarray:
    """Any Pillow-readable file (JPEG incl. CMYK/grayscale, PNG with alpha, ...) -> uint8 [size, size, 3] RGB.

    The pipeline's own decode + resize (vgg_jax.data.resize), so the same file at the same options gives
    the array training saw. The defaults are `keras.utils.load_img(path, target_size=(size, size))`:
    squash, nearest neighbour, so a Keras user's numbers are reproduced exactly. `size=None` keeps the
    decoded size. A file that cannot be read or decoded, or an image of more than MAX_PIXELS pixels,
    is a one-line UserError naming the file.
    """
    check_options(resize, interpolation)
    try:
        if size is not None:
            return decode_resize(path, size, resize, interpolation)
        return np.asarray(decode(path), dtype=np.uint8)
    except DecodeError as e:
        raise UserError(f"{printable(os.fspath(path))}: {e}") from None
