"""Keras 3 `.keras` archives (zip: config.json, metadata.json, model.weights.h5), read with limits.

Sizes come from the zip directory and are checked before anything is read. Keras stores members
uncompressed, so model.weights.h5 is read in place (a window onto the archive, nothing extracted);
a compressed member is extracted beside the cache, under our temp naming, counting bytes as it goes.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vgg_jax.convert.guard import first_line
from vgg_jax.errors import UserError
from vgg_jax.faults import maybe_kill
from vgg_jax.fileio import clean_stale_temps, os_reason, temp_name
from vgg_jax.paths import cache_dir

WEIGHTS = "model.weights.h5"
SIZE_CAP = 2 << 30  # all members together: 3.7x the largest real VGG archive (VGG19 with top, 575 MB)
JSON_CAP = 64 << 20  # config.json / metadata.json (VGG16's config is 20 KB)


@dataclass
class Archive:
    """What vgg-jax reads from a .keras file: the weights (a file-like window or an extracted path) and the JSON."""

    weights: io.RawIOBase | Path
    config: dict | None
    metadata: dict | None


def extract_dir() -> Path:
    """Where compressed model.weights.h5 members are extracted (temp names, removed after use or when stale)."""
    return cache_dir() / "extract"


@contextmanager
def open_archive(path: Path) -> Iterator[Archive]:
    """Checks the zip directory against the size cap, then yields the weights and the parsed JSON members."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise UserError(f"{path}: corrupt .keras archive ({first_line(e)})") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        if WEIGHTS not in infos:
            raise UserError(
                f"{path}: .keras archive without {WEIGHTS} (holds: {', '.join(list(infos)[:6]) or 'nothing'})"
            )
        _check_sizes(path, list(infos.values()))
        config = _read_json(path, zf, infos.get("config.json"))
        metadata = _read_json(path, zf, infos.get("metadata.json"))
        info = infos[WEIGHTS]
        if info.flag_bits & 0x1:
            raise UserError(f"{path}: {WEIGHTS} is encrypted; vgg-jax reads Keras' own (unencrypted) archives")
        if info.compress_type == zipfile.ZIP_STORED:
            with _stored_member(path, info) as window:
                yield Archive(window, config, metadata)
        else:
            with _extracted_member(path, zf, info) as extracted:
                yield Archive(extracted, config, metadata)


def _check_sizes(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    total = sum(i.file_size for i in infos)
    if total > SIZE_CAP:
        biggest = max(infos, key=lambda i: i.file_size)
        raise UserError(
            f"{path}: archive members declare {_gib(total)} uncompressed ({biggest.filename}: {_gib(biggest.file_size)}), "
            f"over the {_gib(SIZE_CAP)} limit for a VGG .keras file; refused (a zip bomb?)"
        )


def _read_json(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> dict | None:
    """A JSON member, read with a byte cap; None when absent. Damaged JSON is a one-line error."""
    if info is None:
        return None
    try:
        with zf.open(info) as f:
            raw = f.read(JSON_CAP + 1)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
        raise UserError(f"{path}: corrupt .keras archive ({info.filename}: {first_line(e)})") from None
    if len(raw) > JSON_CAP:
        raise UserError(f"{path}: {info.filename} is over {JSON_CAP >> 20} MiB; not a Keras model config")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: {info.filename} is not valid JSON ({first_line(e)})") from None
    return value if isinstance(value, dict) else None


@contextmanager
def _stored_member(path: Path, info: zipfile.ZipInfo) -> Iterator[io.RawIOBase]:
    fd = os.open(path, os.O_RDONLY)
    try:
        header = os.pread(fd, zipfile.sizeFileHeader, info.header_offset)
        if len(header) != zipfile.sizeFileHeader or header[:4] != zipfile.stringFileHeader:
            raise UserError(f"{path}: corrupt .keras archive (no local header for {WEIGHTS})")
        fields = struct.unpack(zipfile.structFileHeader, header)
        start = info.header_offset + zipfile.sizeFileHeader + fields[10] + fields[11]  # + name + extra field
        if info.file_size != info.compress_size:
            raise UserError(f"{path}: corrupt .keras archive (stored {WEIGHTS} with two different sizes)")
        if start + info.file_size > os.fstat(fd).st_size:
            raise UserError(f"{path}: truncated .keras archive ({WEIGHTS} runs past the end of the file)")
        yield _Window(fd, start, info.file_size)
    finally:
        os.close(fd)


class _Window(io.RawIOBase):
    """Bytes [start, start + size) of an open file, read with pread: h5py reads it as a file."""

    def __init__(self, fd: int, start: int, size: int):
        super().__init__()
        self._fd, self._start, self._size, self._pos = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        got = os.preadv(self._fd, [memoryview(buffer).cast("B")[:n]], self._start + self._pos) if n else 0
        self._pos += got
        return got


@contextmanager
def _extracted_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[Path]:
    """A compressed member, extracted to a temp file under our naming (cleaned when stale), never past its size."""
    folder = extract_dir()
    clean_stale_temps(folder)
    tmp = temp_name(folder / WEIGHTS)
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _copy_capped(zf, info, tmp)
        except OSError as e:
            raise UserError(
                f"{folder}: cannot extract {WEIGHTS} of {path} here ({os_reason(e)}); set VGG_JAX_CACHE"
            ) from None
        except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as e:
            raise UserError(f"{path}: corrupt .keras archive ({first_line(e)})") from None
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _copy_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    written = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while block := src.read(1 << 20):
            written += len(block)
            if written > min(info.file_size, SIZE_CAP):
                raise ValueError(f"{info.filename} inflates past its declared {info.file_size} bytes")
            out.write(block)
            maybe_kill("convert-extract")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"
