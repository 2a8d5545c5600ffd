"""Decode one image file to uint8 RGB with Pillow (no tensorflow), for `classify` and small jobs."""

from __future__ import annotations

import errno
import os
import warnings

import numpy as np

from vgg_jax.data_check import MAX_PIXELS, image_dimensions, too_large
from vgg_jax.data_source import printable
from vgg_jax.errors import UserError


def load_image(path: str | os.PathLike, size: int | None = 224) -> np.ndarray:
    """Any Pillow-readable file (JPEG incl. CMYK/grayscale, PNG with alpha, ...) -> uint8 [size, size, 3] RGB.

    Resizes with nearest-neighbour, like `keras.utils.load_img(path, target_size=(size, size))`,
    so a Keras user's numbers can be reproduced exactly. An image of more than MAX_PIXELS pixels
    (a decompression bomb: a few KB of PNG can declare 30000x30000) is refused before decoding.
    """
    from PIL import Image, UnidentifiedImageError

    shown = printable(os.fspath(path))
    _check_pixels(shown, image_dimensions(path))  # from the header alone: JPEG, PNG, GIF, BMP, WebP
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(path) as im:
                _check_pixels(shown, im.size)  # other formats: Pillow has read the header, not the pixels
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.NEAREST)
                return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{shown}: no such image file") from None
    except Image.DecompressionBombError as e:  # over twice Pillow's limit, in a format we read no header of
        raise UserError(f"{shown}: image too large to decode ({e})") from None
    except UnidentifiedImageError:
        raise UserError(f"{shown}: cannot decode image (not an image format Pillow reads)") from None
    except OSError as e:
        if e.errno is not None:  # the file system's error (a symlink loop, a folder): its message names the raw path
            why = "symlink loop" if e.errno == errno.ELOOP else e.strerror
            raise UserError(f"{shown}: cannot read image ({why})") from None
        raise UserError(f"{shown}: cannot decode image ({e})") from None
    except ValueError as e:
        raise UserError(f"{shown}: cannot decode image ({e})") from None


def _check_pixels(shown: str, dims: tuple[int, int] | None) -> None:
    if too_large(dims):
        raise UserError(f"{shown}: image too large to decode ({dims[0]}x{dims[1]} pixels, limit {MAX_PIXELS:,})")
