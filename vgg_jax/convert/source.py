"""Open any Keras VGG weights file and list its weighted layers in network order, read lazily.

Knows the file layouts of Keras 0.x, 1, 2 (incl. tf.keras) and 3 (docs/DESIGN.md, "Formats");
knows nothing about Flax. numpy + h5py only.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vgg_jax.convert.archive import Archive, open_archive
from vgg_jax.convert.conventions import data_format
from vgg_jax.convert.guard import DatasetError, decode, first_line, read_array, refuse_other_files
from vgg_jax.errors import UserError
from vgg_jax.fileio import os_reason
from vgg_jax.paths import natural_key

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
    """A Keras weights file: its format, its weighted layers in network order and what it records about itself."""

    path: Path
    format: str
    layers: list[Layer]
    backend: str | None = None
    keras_version: str | None = None
    config: dict | None = None  # the model config (model_config attribute or config.json), when the file has one
    names_from: str = "layer_names"  # where layer names came from: layer_names, config.json, name attributes, order

    @property
    def description(self) -> str:
        extra = [f"keras {self.keras_version}"] if self.keras_version else []
        extra += [f"backend {self.backend}"] if self.backend else []
        extra += [f"data_format {fmt}"] if (fmt := data_format(self.config)) else []
        return FORMATS[self.format] + (f" [{', '.join(extra)}]" if extra else "")


@contextmanager
def open_source(path: str | Path) -> Iterator[Source]:
    """Detects the format of `path` and yields its layers; raises UserError naming the file.

    Before any array is read, the file is checked not to read other files (external links, external storage,
    virtual datasets) and, for .keras archives, its zip directory is checked against a size cap.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes); the download or copy probably failed")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({os_reason(e)})") from None
    with ExitStack() as stack:
        h5_file, archive = path, None
        if head != HDF5_SIGNATURE and zipfile.is_zipfile(path):
            archive = stack.enter_context(open_archive(path))
            h5_file = archive.weights
        elif head.startswith(b"PK"):
            raise UserError(f"{path}: truncated or corrupt zip (.keras) archive: no zip directory at its end")
        elif head != HDF5_SIGNATURE and not h5py.is_hdf5(path):
            raise UserError(
                f"{path}: not an HDF5 file (starts with {head!r}); expected a Keras .h5, .weights.h5 or .keras file"
            )
        try:
            f = stack.enter_context(h5py.File(h5_file, "r"))
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: truncated or corrupt HDF5 file ({first_line(e)})") from None
        try:
            refuse_other_files(path, f)
            source = _read_layers(path, f, archive)
        except UserError:  # already names the file and the problem (a UserError is a ValueError too)
            raise
        except (KeyError, OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable Keras weights ({first_line(e)}); the file may be truncated") from None
        try:
            yield source
        except DatasetError as e:
            raise UserError(f"{path}: {e}") from None


def _read_layers(path: Path, f: h5py.File, archive: Archive | None) -> Source:
    config = _model_config(f)
    if "nb_layers" in f.attrs:
        return Source(path, "keras0", _keras0_layers(f), names_from="order")
    if "model_weights" in f:
        g = f["model_weights"]
        return Source(
            path,
            "keras2-model",
            _named_layers(g),
            decode(g.attrs.get("backend")) or decode(f.attrs.get("backend")),
            decode(g.attrs.get("keras_version")) or decode(f.attrs.get("keras_version")),
            config,
        )
    if _has_attr_list(f.attrs, "layer_names"):
        version = decode(f.attrs.get("keras_version"))
        fmt = "keras2" if version else "keras1"
        return Source(path, fmt, _named_layers(f), decode(f.attrs.get("backend")), version, config)
    if "layers" in f:
        config = archive.config if archive else None
        version = (archive.metadata or {}).get("keras_version") if archive else None
        layers, names_from = _keras3_layers(f, config)
        fmt = "keras3-archive" if archive else "keras3"
        return Source(path, fmt, layers, None, str(version) if version else None, config, names_from)
    groups = ", ".join(list(f.keys())[:6]) or "none"
    raise UserError(f"{path}: HDF5 file holds no Keras weights (top-level groups: {groups})")


def _model_config(f: h5py.File) -> dict | None:
    """The `model_config` attribute of a Keras 1/2/3-legacy model.save file, parsed; None if absent or damaged."""
    try:
        value = json.loads(decode(f.attrs.get("model_config")) or "null")
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


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
    """Keras 1/2/3-legacy: the `layer_names` attribute gives network order (groups may be sorted by name).

    A nested model (a VGG16 used as one layer of a fine-tuned model) is one group whose weight names carry
    its layers' names ('block1_conv1/kernel:0', ...): it is split into those layers, in order."""
    layers = []
    for name in _attr_list(g.attrs, "layer_names"):
        weight_names = _attr_list(g[name].attrs, "weight_names")
        by_prefix: dict[str, list[h5py.Dataset]] = {}
        for w in weight_names:
            by_prefix.setdefault(w.rpartition("/")[0], []).append(g[name][w])
        if len(by_prefix) > 1:
            layers += [Layer(prefix.split("/")[-1], datasets) for prefix, datasets in by_prefix.items()]
        elif weight_names:
            layers.append(Layer(name, [g[name][w] for w in weight_names]))
    return layers


def _keras3_layers(f: h5py.File, config: dict | None) -> tuple[list[Layer], str]:
    """Keras 3: every `.../vars` group holds one layer's variables as datasets 0, 1, ...; also where names came from.

    Groups are named by class and position (conv2d, conv2d_1, ..., conv2d_12), not by layer name, so natural
    sorting of the paths restores network order within each class. Names come from a .keras archive's
    config.json (its layer list gives each group's layer), else from the `name` attribute recent Keras 3
    writes on `vars`, else the paths stay the names and the mapper goes by order.
    """
    found: list[tuple[str, h5py.Group]] = []

    def visit(name: str, obj) -> None:
        # Only model layers: a saved optimizer's moments live under optimizer/vars.
        if isinstance(obj, h5py.Group) and name.startswith("layers/") and name.endswith("/vars") and len(obj):
            found.append((name[: -len("/vars")], obj))

    f.visititems(visit)
    found.sort(key=lambda item: natural_key(item[0]))
    by_config = keras3_paths(config) if config else {}
    attrs = {name: decode(vars_group.attrs.get("name")) for name, vars_group in found}
    if found and all(name in by_config for name, _ in found):
        names, names_from = by_config, "config.json"
    elif found and all(attrs.values()):
        names, names_from = attrs, "name attributes"
    else:
        names, names_from = {}, "order"
    layers = [
        Layer(names.get(name) or name, [vars_group[k] for k in sorted(vars_group.keys(), key=int)], path=name)
        for name, vars_group in found
    ]
    return layers, names_from


def keras3_paths(config: dict) -> dict[str, str]:
    """{"layers/conv2d_3": "block2_conv2", ...} from a Keras 3 model config, following Keras' own naming of
    saved list items: the snake_case class name, then _1, _2, ... per class (saving_lib._get_unique_name)."""
    paths: dict[str, str] = {}

    def walk(layers: list, prefix: str) -> None:
        used: dict[str, int] = {}
        for layer in layers:
            if not isinstance(layer, dict):
                continue
            inner = layer.get("config") if isinstance(layer.get("config"), dict) else {}
            key = _snake_case(str(layer.get("class_name", "")))
            used[key] = used.get(key, -1) + 1
            path = f"{prefix}layers/{key}" + (f"_{used[key]}" if used[key] else "")
            paths[path] = str(inner.get("name") or layer.get("name") or path)
            if isinstance(inner.get("layers"), list):
                walk(inner["layers"], path + "/")

    model = config.get("config") if isinstance(config.get("config"), dict) else {}
    walk(model.get("layers") if isinstance(model.get("layers"), list) else [], "")
    return paths


def _snake_case(name: str) -> str:
    """Keras' naming.to_snake_case: 'Conv2D' -> 'conv2d', 'MaxPooling2D' -> 'max_pooling2d'."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


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
    return [decode(v) for v in np.atleast_1d(values)] if np.size(values) else []
