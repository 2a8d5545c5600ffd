"""Open any Keras VGG weights file and list its weighted layers in network order, read lazily.

Knows the file layouts of Keras 0.x, 1, 2 (incl. tf.keras) and 3 (REFERENCE.md section 1);
knows nothing about Flax. numpy + h5py only.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from vgg_jax.errors import UserError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

FORMATS = {
    "keras0": "Keras 0.x Sequential.save_weights (nb_layers, layer_k/param_p)",
    "keras1": "Keras 1 save_weights (layer_names/weight_names, no keras_version)",
    "keras2": "Keras 2 / tf.keras save_weights (layer_names/weight_names)",
    "keras2-model": "Keras 2 / tf.keras / Keras 3 legacy model.save .h5 (model_weights group)",
    "keras3": "Keras 3 .weights.h5 (layers/<class>_<n>/vars)",
    "keras3-archive": "Keras 3 .keras archive (model.weights.h5 inside)",
}


@dataclass
class Layer:
    """One weighted layer as stored: its name in the file and its datasets (read on demand)."""

    name: str
    datasets: list[h5py.Dataset]
    path: str = ""  # where it sits in the file, when that differs from its name (Keras 3)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(d.shape) for d in self.datasets]

    @property
    def kind(self) -> str:
        """ "conv" (4-D kernel), "dense" (2-D kernel) or "other" (batch norm, embeddings, ...)."""
        ndim = len(self.shapes[0])
        return {4: "conv", 2: "dense"}.get(ndim, "other")

    def read(self, i: int) -> np.ndarray:
        return read_array(self.datasets[i])


@dataclass
class Source:
    """A Keras weights file: its format, its weighted layers in network order and its attributes."""

    path: Path
    format: str
    layers: list[Layer]
    backend: str | None = None
    keras_version: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        extra = [f"keras {self.keras_version}"] if self.keras_version else []
        extra += [f"backend {self.backend}"] if self.backend else []
        return FORMATS[self.format] + (f" [{', '.join(extra)}]" if extra else "")


def read_array(dataset: h5py.Dataset) -> np.ndarray:
    """A dataset as a float32 array; Keras 3 stores bfloat16 as uint16 with attr dtype='bfloat16'."""
    array = dataset[()]
    if _decode(dataset.attrs.get("dtype")) == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(array, dtype=np.float32)


@contextmanager
def open_source(path: str | Path) -> Iterator[Source]:
    """Detects the format of `path` and yields its layers; raises UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes); the download or copy probably failed")
    with ExitStack() as stack:
        h5_path, fmt = path, None
        if zipfile.is_zipfile(path):
            h5_path = stack.enter_context(_extract_keras_archive(path))
            fmt = "keras3-archive"
        else:
            with open(path, "rb") as f:
                head = f.read(8)
            if head != HDF5_SIGNATURE and not h5py.is_hdf5(path):
                raise UserError(
                    f"{path}: not an HDF5 file (starts with {head!r}); expected a Keras .h5, .weights.h5 or .keras file"
                )
        try:
            f = stack.enter_context(h5py.File(h5_path, "r"))
        except OSError as e:
            raise UserError(f"{path}: truncated or corrupt HDF5 file ({_first_line(e)})") from None
        try:
            source = _read_layers(path, f, fmt)
        except (KeyError, OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable Keras weights ({_first_line(e)}); the file may be truncated") from None
        yield source


def _read_layers(path: Path, f: h5py.File, fmt: str | None) -> Source:
    if "nb_layers" in f.attrs:
        return Source(path, "keras0", _keras0_layers(f))
    if "model_weights" in f:
        g = f["model_weights"]
        return Source(
            path,
            fmt or "keras2-model",
            _named_layers(g),
            _decode(g.attrs.get("backend")),
            _decode(g.attrs.get("keras_version")),
        )
    if _has_attr_list(f.attrs, "layer_names"):
        version = _decode(f.attrs.get("keras_version"))
        return Source(
            path, fmt or ("keras2" if version else "keras1"), _named_layers(f), _decode(f.attrs.get("backend")), version
        )
    if "layers" in f:
        return Source(path, fmt or "keras3", _keras3_layers(f))
    groups = ", ".join(list(f.keys())[:6]) or "none"
    raise UserError(f"{path}: HDF5 file holds no Keras weights (top-level groups: {groups})")


def _keras0_layers(f: h5py.File) -> list[Layer]:
    """Keras 0.x: layer_{k}/param_{p}; ZeroPadding, pooling, Flatten and Dropout have nb_params=0."""
    layers = []
    for k in range(int(f.attrs["nb_layers"])):
        g = f[f"layer_{k}"]
        n = int(g.attrs.get("nb_params", len(g)))
        if n:
            layers.append(Layer(f"layer_{k}", [g[f"param_{p}"] for p in range(n)]))
    return layers


def _named_layers(g: h5py.Group) -> list[Layer]:
    """Keras 1/2/3-legacy: the `layer_names` attribute gives network order (groups may be sorted by name)."""
    layers = []
    for name in _attr_list(g.attrs, "layer_names"):
        weight_names = _attr_list(g[name].attrs, "weight_names")
        if weight_names:
            layers.append(Layer(name, [g[name][w] for w in weight_names]))
    return layers


def _keras3_layers(f: h5py.File) -> list[Layer]:
    """Keras 3: every `.../vars` group holds one layer's variables as datasets 0, 1, ...

    Groups are named by class and creation order (conv2d, conv2d_1, ..., conv2d_12), not by
    layer name, so natural sorting of the paths restores network order within each class.
    Recent Keras 3 also stores the layer name as the `name` attribute of `vars`; we use it when present.
    """
    found: list[tuple[str, h5py.Group]] = []

    def visit(name: str, obj) -> None:
        # Only model layers: a saved optimizer's moments live under optimizer/vars.
        if isinstance(obj, h5py.Group) and name.startswith("layers/") and name.endswith("/vars") and len(obj):
            found.append((name[: -len("/vars")], obj))

    f.visititems(visit)
    layers = []
    for name, vars_group in sorted(found, key=lambda item: natural_key(item[0])):
        keys = sorted(vars_group.keys(), key=int)
        layer_name = _decode(vars_group.attrs.get("name")) or name
        layers.append(Layer(layer_name, [vars_group[k] for k in keys], path=name))
    return layers


@contextmanager
def _extract_keras_archive(path: Path) -> Iterator[Path]:
    """A .keras zip: extract model.weights.h5 to a temp dir (h5py needs a seekable file)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if "model.weights.h5" not in names:
            raise UserError(f"{path}: .keras archive without model.weights.h5 (holds: {', '.join(names[:6])})")
        tmp = tempfile.mkdtemp(prefix="vgg-jax-keras-")
        try:
            try:
                target = Path(zf.extract("model.weights.h5", tmp))
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise UserError(f"{path}: corrupt .keras archive ({_first_line(e)})") from None
            yield target
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def archive_config(path: Path) -> dict | None:
    """The model config.json of a .keras archive, if any (used only for the report)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("config.json"))
    except (KeyError, zipfile.BadZipFile, ValueError):
        return None


def natural_key(text: str) -> list:
    """'conv2d_10' sorts after 'conv2d_2'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _has_attr_list(attrs, name: str) -> bool:
    return name in attrs or f"{name}0" in attrs


def _attr_list(attrs, name: str) -> list[str]:
    """A list attribute, joined back if Keras split it into name0, name1, ... (HDF5 64 KB attr limit)."""
    if name in attrs:
        values = attrs[name]
    else:
        values, i = [], 0
        while f"{name}{i}" in attrs:
            values.extend(attrs[f"{name}{i}"])
            i += 1
    return [_decode(v) for v in np.atleast_1d(values)] if np.size(values) else []


def _decode(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
