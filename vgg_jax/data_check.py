"""Cheap structural checks of image files (head and tail bytes only), so broken files are known before training starts.

A full decode of every file costs as much as one epoch of decoding; these checks read at most
`TAIL` + 64 bytes per file and catch what real downloads contain: zero-byte files, truncated
files, non-images with image extensions and unreadable paths. Files that pass but still fail
to decode are masked out by the pipeline at run time (see docs/DATA.md).
"""

from __future__ import annotations

import os
import struct

# Extensions the folder sources list (lower case). Other files (Thumbs.db, .txt) are ignored, not "skipped".
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
HEAD, TAIL = 64, 4096  # JPEG EOI / PNG IEND / GIF trailer sit in the last bytes; a few KiB allow trailing padding


def check_image_file(path: str | os.PathLike) -> str | None:
    """None if the file looks decodable by tf.io.decode_image, else a short reason ("zero bytes", ...)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return "zero bytes"
            head = f.read(HEAD)
            if size > HEAD + TAIL:
                f.seek(size - TAIL)
                tail = f.read(TAIL)
            else:
                tail = head + f.read()
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__})"
    return check_image_bytes(head, tail, size)


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
    return "not an image (not JPEG, PNG, GIF, BMP or WebP)"


def _check_bmp(head: bytes, size: int) -> str | None:
    declared, bits = struct.unpack("<I", head[2:6])[0], struct.unpack("<H", head[28:30])[0]
    if declared > size:
        return "truncated BMP"
    # tf.io.decode_bmp reads 24/32-bit pixels; it rejects 1/4-bit files and reads 8-bit palette
    # indices as gray levels, which would silently give wrong colours for a colour palette.
    if bits in (24, 32):
        return None
    return f"unsupported BMP ({bits}-bit)"
