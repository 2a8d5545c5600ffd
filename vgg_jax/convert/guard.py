"""What vgg-jax accepts from an HDF5 weights file before and while reading it: nothing that reads other files
(external links, external storage, virtual datasets), floating-point weights only, finite values only."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from vgg_jax.errors import UserError

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class DatasetError(Exception):
    """A dataset that cannot serve as weights; open_source adds the file name and makes it a UserError."""


def refuse_other_files(path: Path, f: h5py.File) -> None:
    """UserError for external links, external storage and virtual datasets: a weights file must not read other
    files. Walks the links themselves, so an external link is never followed."""
    found: list[str] = []

    def visit(name: str, link) -> bool | None:
        if isinstance(link, h5py.ExternalLink):
            found.append(f"link '{name}' reads another file (external link to {link.filename}:{link.path})")
        elif isinstance(link, h5py.HardLink):
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset) and obj.external:
                files = sorted({os.fsdecode(entry[0]) for entry in obj.external})
                found.append(f"dataset '{name}' reads another file (external storage: {', '.join(files)})")
            elif isinstance(obj, h5py.Dataset) and obj.is_virtual:
                files = sorted({m.file_name for m in obj.virtual_sources()})
                found.append(f"dataset '{name}' reads another file (virtual dataset over {', '.join(files)})")
        elif not isinstance(link, h5py.SoftLink):
            found.append(f"link '{name}' is a {type(link).__name__}, which Keras never writes")
        return True if found else None

    f.visititems_links(visit)
    if found:
        raise UserError(f"{path}: {found[0]}; refused")


def dataset_name(dataset: h5py.Dataset) -> str:
    """'model_weights/fc1/fc1/kernel:0': the dataset's path in its file."""
    return (dataset.name or "?").lstrip("/")


def storage_dtype(dataset: h5py.Dataset) -> str:
    """The dtype as Keras meant it: Keras 3 stores bfloat16 as uint16 with the attribute dtype='bfloat16'."""
    if decode(dataset.attrs.get("dtype")) == "bfloat16" and dataset.dtype == np.uint16:
        return "bfloat16"
    return dataset.dtype.name


def check_float(dataset: h5py.Dataset) -> str:
    """The storage dtype of a weights dataset; DatasetError unless it is floating point."""
    dtype = storage_dtype(dataset)
    if dtype not in FLOAT_DTYPES:
        raise DatasetError(
            f"dataset '{dataset_name(dataset)}' holds {dtype} values, not floating-point weights; refused"
        )
    return dtype


def read_array(dataset: h5py.Dataset) -> np.ndarray:
    """A floating-point dataset as a finite float32 array (float16/bfloat16 exactly, float64 rounded)."""
    dtype = check_float(dataset)
    try:
        array = dataset[()]
    except (OSError, ValueError, TypeError) as e:
        raise DatasetError(
            f"dataset '{dataset_name(dataset)}' unreadable ({first_line(e)}); the file may be truncated or corrupt"
        ) from None
    if dtype == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 range becomes inf: counted below
        array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(
        array.sum(dtype=np.float64)
    ):  # a float64 sum of float32 cannot overflow: only NaN/inf make it so
        bad = array.size - np.count_nonzero(np.isfinite(array))
        raise DatasetError(
            f"dataset '{dataset_name(dataset)}' holds {bad:,} NaN or infinite value(s) in float32 (of {array.size:,}); "
            "refused: a network with them gives NaN outputs"
        )
    return array


def decode(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
