"""The one decode + resize used everywhere (pipeline, `classify`, the library): no tensorflow.

    image = decode_resize(path_or_bytes, 224, "squash", "nearest")   # uint8 [224, 224, 3] RGB

The same file at the same options gives the same array wherever it is read, so serving sees the
pixels training saw. JPEGs in YCbCr or grayscale are decoded by simplejpeg (libjpeg-turbo, the
same IDCT and upsampling as Pillow's: the same pixels, about 1.5x faster); every other file, and a
JPEG simplejpeg refuses, by Pillow. Resizing is Pillow's.

DCT-domain downscaling (libjpeg decodes at 1/2, 1/4 or 1/8 scale) is used only for bilinear, and
only when Pillow's resize still reduces at least DCT_MIN_REDUCTION times afterwards: there the
result is within 4 levels (mean <= 0.48) of the full decode's, by the measurement in DCT_MIN_REDUCTION's
comment. Nearest must pick source pixels exactly, so it always decodes at full size.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import warnings

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from vgg_jax.data.checks import MAX_PIXELS, TAIL, header_dimensions, too_large
from vgg_jax.errors import UserError

INTERPOLATIONS = ("nearest", "bilinear")
RESIZE_MODES = ("squash", "center-crop", "pad")
PAD_RGB = (123.68, 116.779, 103.939)  # ImageNet mean: "pad" borders become ~0 after caffe preprocessing
PAD_FILL = tuple(round(c) for c in PAD_RGB)  # (124, 117, 104): the uint8 the borders hold
_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}
# Bilinear after a 1/f DCT-domain decode vs after the full decode, on matplotlib's grace_hopper.jpg (a real 512x600
# photo) at targets 16-160 px, all three modes: a remaining reduction of >= 4x gives mean |diff| <= 0.48, max <= 4;
# >= 2x gave max 12, < 2x up to 40. Bilinear's own rounding and JPEG's quantisation are of the first size, not the second.
DCT_MIN_REDUCTION = 4
_SIMPLEJPEG_COLORSPACES = ("YCbCr", "Gray")  # CMYK, YCCK and the rest: Pillow, which knows Adobe's inverted CMYK


class DecodeError(ValueError):
    """A file or byte string that is not a decodable image; `str(e)` is one line, `e.reason` the cause alone."""

    def __init__(self, problem: str, reason: str | None = None):
        super().__init__(f"{problem} ({reason})" if reason else problem)
        self.reason = reason or problem


def check_options(resize: str, interpolation: str) -> None:
    """Raises UserError unless `resize` is one of RESIZE_MODES and `interpolation` one of INTERPOLATIONS."""
    if resize not in RESIZE_MODES:
        raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}. Received: resize={resize!r}")
    if interpolation not in INTERPOLATIONS:
        raise UserError(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}. Received: interpolation={interpolation!r}"
        )


def decode(source: bytes | str | os.PathLike, shrink: int = 1) -> Image.Image:
    """Encoded bytes or a file path -> RGB Pillow image (loaded), or DecodeError saying why not.

    `shrink` (1, 2, 4 or 8) asks a JPEG for libjpeg's DCT-domain 1/shrink scale; other formats ignore it.

    A path is read whole first, as `keras.utils.load_img` does. Grayscale, CMYK, palette and alpha
    images become RGB by Pillow's `convert("RGB")`, as in load_img, except 16-bit grayscale, which
    keeps its high byte (load_img clips it to nearly white); a GIF gives its first frame;
    EXIF orientation is not applied (Keras does not either). An image of more than MAX_PIXELS pixels
    (a decompression bomb: a few KB of PNG can declare 30000x30000) is refused from its header,
    before any pixel is decoded.
    """
    data = source if isinstance(source, (bytes, bytearray, memoryview)) else _read(source)
    try:
        dims = header_dimensions(
            io.BytesIO(data), bytes(data[:TAIL])
        )  # JPEG, PNG, GIF, BMP, WebP: from the header alone
        _check_pixels(dims)
        if (fast := _simplejpeg(data, shrink)) is not None:
            return fast
        if dims is not None:  # within the limit: Pillow has nothing to warn about
            return _open_rgb(data)
        with warnings.catch_warnings():  # another format: our own limit is checked on Pillow's header instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _open_rgb(data)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:  # over twice Pillow's limit, in a format we read no header of
        raise DecodeError("image too large to decode", _line(e)) from None
    except UnidentifiedImageError:
        raise DecodeError("cannot decode image", "not an image format Pillow reads") from None
    # What truncated or corrupt files make Pillow and its plugins raise.
    except (OSError, ValueError, EOFError, SyntaxError, IndexError, struct.error) as e:
        raise DecodeError("cannot decode image", _line(e)) from None


def resize(
    image: Image.Image, size: int, mode: str, interpolation: str, *, decoded_from: tuple[int, int, int] | None = None
) -> np.ndarray:
    """RGB Pillow image -> uint8 [size, size, 3] by `mode` (RESIZE_MODES) and `interpolation` (INTERPOLATIONS).

    squash: the whole image to size x size (aspect ratio lost), as `keras.utils.load_img(target_size=...)`.
    center-crop: the centred square (side = the shorter side), as `load_img(..., keep_aspect_ratio=True)`;
    Pillow's `box=` is used, so bilinear filtering near the crop's edges reads the pixels just outside it.
    pad: the longer side to `size`, aspect kept, centred on a PAD_FILL canvas.
    Pillow's filters: NEAREST, and BILINEAR, which antialiases when reducing (its support widens with the
    scale), as `load_img(..., interpolation="bilinear")` does, unlike `tf.image.resize(antialias=False)`.
    `decoded_from` = (width, height, shrink): `image` is a JPEG of that size decoded at 1/shrink scale
    (`decode_resize` does that for bilinear); the geometry is then that of the full image, within 4 levels of load_img.
    """
    check_options(mode, interpolation)
    _check_size(size)
    f = _FILTERS[interpolation]
    w, h, shrink = decoded_from or (*image.size, 1)
    box, out = (0, 0, w, h), (size, size)
    if mode == "center-crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
    elif mode == "pad":
        scale = size / max(w, h)
        out = (max(1, round(w * scale)), max(1, round(h * scale)))
    # libjpeg's scaled pixel i covers full pixels [i * shrink, (i + 1) * shrink): the full image's box, divided
    resized = image.resize(out, f, box=tuple(c / shrink for c in box))
    if mode == "pad":
        canvas = Image.new("RGB", (size, size), PAD_FILL)
        canvas.paste(resized, ((size - out[0]) // 2, (size - out[1]) // 2))
        resized = canvas
    return np.asarray(resized, dtype=np.uint8)


def decode_resize(source: bytes | str | os.PathLike, size: int, mode: str, interpolation: str) -> np.ndarray:
    """Encoded bytes or a file path -> uint8 [size, size, 3] RGB: `resize(decode(source), ...)`, a large JPEG decoded
    at a DCT-domain scale for bilinear (see the module docstring)."""
    check_options(mode, interpolation)
    _check_size(size)
    data = source if isinstance(source, (bytes, bytearray, memoryview)) else _read(source)
    dims, shrink = _shrink(data, size, mode, interpolation)
    image = decode(data, shrink)
    decoded_from = (*dims, shrink) if shrink > 1 and image.size != dims else None  # a CMYK JPEG: Pillow, full size
    return resize(image, size, mode, interpolation, decoded_from=decoded_from)


def _shrink(data: bytes, size: int, mode: str, interpolation: str) -> tuple[tuple[int, int] | None, int]:
    """A JPEG's (width, height) and the DCT scale divisor for a bilinear resize of it to `size` that leaves Pillow
    at least DCT_MIN_REDUCTION to reduce; (None, 1) when no DCT scaling applies."""
    if interpolation != "bilinear" or data[:3] != b"\xff\xd8\xff":
        return None, 1
    dims = header_dimensions(io.BytesIO(data), bytes(data[:TAIL]))
    if dims is None:
        return None, 1
    w, h = dims
    reduction = (max(w, h) if mode == "pad" else min(w, h)) / size  # squash: the axis reduced least decides
    return dims, next((f for f in (8, 4, 2) if reduction / f >= DCT_MIN_REDUCTION), 1)


def _simplejpeg(data: bytes, shrink: int) -> Image.Image | None:
    """A YCbCr or grayscale JPEG decoded by simplejpeg at 1/shrink scale; None for anything it should not or cannot do."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in _SIMPLEJPEG_COLORSPACES:
            return None
        # The smallest of libjpeg's M/8 scales that keeps ceil(side / shrink) pixels is exactly 1/shrink.
        rgb = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=-(-height // shrink), min_width=-(-width // shrink)
        )
        return Image.fromarray(rgb)
    except ValueError:  # corrupt, or a recoverable libjpeg warning that Pillow tolerates: Pillow decides
        return None


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise UserError(f"size must be a positive integer. Received: size={size!r}")


def _read(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DecodeError("no such image file") from None
    except OSError as e:  # the file system's error (a symlink loop, a folder): its message names the raw path
        raise DecodeError(
            "cannot read image", "symlink loop" if e.errno == errno.ELOOP else e.strerror or type(e).__name__
        ) from None


def _open_rgb(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    _check_pixels(im.size)  # other formats: Pillow has read the header, not the pixels
    im.load()  # the pixels (of the first frame of an animation)
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit gray (PNG, PNM): convert() would clip it to white
        im = Image.fromarray((np.asarray(im, np.int64) >> 8).clip(0, 255).astype(np.uint8))  # the high byte, as TF
    return im if im.mode == "RGB" else im.convert("RGB")  # no copy of an RGB image: a fresh 0.5 MB costs 0.7 ms here


def _check_pixels(dims: tuple[int, int] | None) -> None:
    if too_large(dims):
        raise DecodeError("image too large to decode", f"{dims[0]}x{dims[1]} pixels, limit {MAX_PIXELS:,}")


def _line(e: Exception) -> str:
    """An exception's message as one short line (Pillow's are short; a plugin's may not be)."""
    lines = str(e).strip().splitlines()
    return lines[0][:160] if lines else type(e).__name__
