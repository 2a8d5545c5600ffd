"""Cheap structural checks of image files (head, tail and header bytes only), so broken files are known before training.

A full decode of every file costs as much as one epoch of decoding; these checks read at most
`TAIL` + 64 bytes per file (plus the segment headers of a JPEG up to its frame header) and catch
what real downloads contain: zero-byte files, truncated files, non-images with image extensions,
formats the pipeline does not read (TIFF, HEIC, ...), unreadable paths and images whose header
declares more pixels than `MAX_PIXELS` (decompression bombs). Files that pass but still fail to
decode are masked out by the pipeline at run time (see docs/DATA.md).
"""

from __future__ import annotations

import errno
import os
import struct
from typing import BinaryIO

# Extensions the folder sources read (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Image extensions we do not read: listed and counted as skipped. Other names (Thumbs.db, .txt) are ignored.
UNSUPPORTED_EXTENSIONS = {
    ".tif": "TIFF", ".tiff": "TIFF", ".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".jp2": "JPEG 2000",
    ".j2k": "JPEG 2000", ".jpx": "JPEG 2000", ".jxl": "JPEG XL", ".svg": "SVG", ".svgz": "SVG", ".ico": "ICO",
    ".psd": "PSD", ".tga": "TGA", ".pbm": "PNM", ".pgm": "PNM", ".ppm": "PNM", ".pnm": "PNM", ".exr": "OpenEXR",
    ".dng": "camera raw", ".cr2": "camera raw", ".nef": "camera raw", ".arw": "camera raw", ".raw": "camera raw",
}  # fmt: skip
# Pillow's default MAX_IMAGE_PIXELS (1 GiB / 4 / 3): a 24-bit image this large needs 256 MiB to decode, per thread.
MAX_PIXELS = 89_478_485
HEAD, TAIL = 64, 4096  # JPEG EOI / PNG IEND / GIF trailer sit in the last bytes; a few KiB allow trailing padding
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_SEGMENTS = 512  # a hostile JPEG gets this many segment headers read, no more


def check_image_file(path: str | os.PathLike) -> str | None:
    """None if the file looks decodable by the pipeline (vgg_jax.data.resize), else a short reason ("zero bytes", ...)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return "zero bytes"
            head = f.read(TAIL)  # magic bytes and, unless a big EXIF block comes first, a JPEG's frame header
            if size > HEAD + TAIL:
                f.seek(size - TAIL)
                tail = f.read(TAIL)
            else:
                tail = head + f.read()
            reason = check_image_bytes(head, tail, size)
            return reason if reason is not None else _size_reason(header_dimensions(f, head))
    except OSError as e:
        return unreadable_reason(e)


def unreadable_reason(e: OSError) -> str:
    """The skip reason for a path that cannot be opened or stat'ed: "symlink loop", "unreadable (...)"."""
    if e.errno == errno.ELOOP:
        return "symlink loop"
    return f"unreadable ({e.strerror or type(e).__name__})"


def image_dimensions(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from a JPEG/PNG/GIF/BMP/WebP header; None for other formats or an unreadable file."""
    try:
        with open(path, "rb") as f:
            return header_dimensions(f, f.read(TAIL))
    except OSError:
        return None


def too_large(dims: tuple[int, int] | None) -> bool:
    """True if an image of `dims` (width, height) has more than MAX_PIXELS pixels."""
    return dims is not None and dims[0] * dims[1] > MAX_PIXELS


def _size_reason(dims: tuple[int, int] | None) -> str | None:
    return f"too large: {dims[0]}x{dims[1]} pixels, over the {MAX_PIXELS:,}-pixel limit" if too_large(dims) else None


def check_image_bytes(head: bytes, tail: bytes, size: int) -> str | None:
    """The checks of `check_image_file` on the first and last bytes of a file of `size` bytes."""
    if head.startswith(b"\xff\xd8\xff"):
        # EOI cannot occur inside entropy-coded data (0xFF is byte-stuffed), so its absence means truncation.
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None if tail.rstrip(b"\x00").endswith(b";") else "truncated GIF (no trailer)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return None if struct.unpack("<I", head[4:8])[0] + 8 <= size else "truncated WebP"
    if head[:2] == b"BM" and len(head) >= 30:
        return _check_bmp(head, size)
    if (kind := _unsupported_kind(head)) is not None:
        return f"unsupported format: {kind}"
    return "not an image (not JPEG, PNG, GIF, BMP or WebP)"


def _unsupported_kind(head: bytes) -> str | None:
    """The name of an image format the pipeline does not read, recognised by its magic bytes."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):  # box file, codestream
        return "JPEG 2000"
    if head.startswith((b"\x00\x00\x00\x0cJXL \r\n\x87\n", b"\xff\x0a")):
        return "JPEG XL"
    if head[:4] == b"8BPS":
        return "PSD"
    text = head.lstrip()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG"
    return None


def _check_bmp(head: bytes, size: int) -> str | None:
    declared, bits = struct.unpack("<I", head[2:6])[0], struct.unpack("<H", head[28:30])[0]
    if declared > size:
        return "truncated BMP"
    # Only 24/32-bit pixels are read: the set tf.io.decode_bmp read when the pipeline ran on tf.data, kept so that
    # the same folder lists the same examples (and the same fingerprint) on either side of that change.
    if bits in (24, 32):
        return None
    return f"unsupported BMP ({bits}-bit)"


def header_dimensions(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """(width, height) declared by the header of an open file whose first bytes are `head`; None if unknown."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", head[6:10])
    if head[:2] == b"BM" and len(head) >= 26 and struct.unpack("<I", head[14:18])[0] >= 40:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)  # a negative height means top-down rows
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_dimensions(head)
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg_dimensions(f, head)
    return None


def _webp_dimensions(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_dimensions(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """Walk the marker segments from the start of the file to the first frame header (SOFn): its width and height."""

    def read(at: int, n: int) -> bytes:  # from `head` when it holds the bytes (nearly always), else from the file
        if at + n <= len(head):
            return head[at : at + n]
        f.seek(at)
        return f.read(n)

    pos = 2
    for _ in range(_JPEG_SEGMENTS):  # fill bytes count too: a file of 0xFF bytes ends the walk early
        marker = read(pos, 2)
        if marker == b"\xff\xff":  # a fill byte before a marker
            pos += 1
            continue
        if len(marker) < 2 or marker[0] != 0xFF or marker[1] in (0xD9, 0xDA):  # not a marker, EOI or start of scan
            return None
        if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD7:  # standalone markers have no length
            pos += 2
            continue
        segment = read(pos + 2, 7)
        if marker[1] in _JPEG_SOF:
            if len(segment) < 7:
                return None
            height, width = struct.unpack(">HH", segment[3:7])
            return (width, height) if height else None  # height 0: defined later by a DNL marker
        if len(segment) < 2:
            return None
        pos += 2 + struct.unpack(">H", segment[:2])[0]
    return None
