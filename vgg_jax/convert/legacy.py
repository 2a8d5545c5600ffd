"""Write canonical params in the Theano-era layouts that no installable Keras writes any more.

Used by the tests, the demo and the benchmarks to produce Keras 0.x (`vgg16_th.h5` of the
original recipe) and Keras 1 (`vgg16_weights_{tf,th}_dim_ordering_*_kernels.h5`) files,
following the layouts in docs/DESIGN.md ("Formats").
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import h5py
import numpy as np

from vgg_jax.models import arch
from vgg_jax.models.params_io import flatten


def to_theano(kernel: np.ndarray) -> np.ndarray:
    """Canonical HWIO correlation kernel -> Theano OIHW convolution kernel (rotated 180 degrees)."""
    return np.ascontiguousarray(kernel[::-1, ::-1].transpose(3, 2, 0, 1))


def fc1_to_chw(kernel: np.ndarray, side: int = arch.IMAGE_SIZE // 32) -> np.ndarray:
    """fc1 rows in (h, w, c) flatten order -> (c, h, w), as a channels-first Flatten produces."""
    channels = kernel.shape[0] // (side * side)
    return np.ascontiguousarray(
        kernel.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(kernel.shape[0], -1)
    )


def _layers(params: Mapping) -> tuple[list[str], bool]:
    flat = flatten(params)
    convs = sorted(
        {k.split("/")[0] for k in flat if k.startswith("block")},
        key=lambda n: tuple(int(x) for x in n[5:].split("_conv")),
    )
    return convs, "fc1/kernel" in flat


def write_keras0(path: str | os.PathLike, params: Mapping) -> None:
    """Keras 0.x Sequential.save_weights, Theano backend: ZeroPadding before each conv, OIHW flipped kernels,
    fc1 rows (c,h,w); layer indices as in the VGG16 gist (ZP0 C1 ZP2 C3 MP4 | ... | Flatten Dense Dropout ...)."""
    flat = flatten(params)
    convs, top = _layers(params)
    entries: list[list[np.ndarray]] = []
    block = "block1"
    for name in convs:
        if not name.startswith(block + "_"):
            entries.append([])  # MaxPooling2D closing the previous block
            block = name.split("_")[0]
        entries.append([])  # ZeroPadding2D((1, 1))
        entries.append([to_theano(flat[f"{name}/kernel"]), flat[f"{name}/bias"]])
    entries.append([])  # last MaxPooling2D
    if top:
        entries.append([])  # Flatten
        entries.append([fc1_to_chw(flat["fc1/kernel"]), flat["fc1/bias"]])
        entries.append([])  # Dropout
        entries.append([flat["fc2/kernel"], flat["fc2/bias"]])
        entries.append([])  # Dropout
        entries.append([flat["predictions/kernel"], flat["predictions/bias"]])
    with h5py.File(path, "w") as f:
        f.attrs["nb_layers"] = len(entries)
        for k, arrays in enumerate(entries):
            g = f.create_group(f"layer_{k}")
            g.attrs["nb_params"] = len(arrays)
            for p, a in enumerate(arrays):
                g.create_dataset(f"param_{p}", data=a)


def write_keras1(path: str | os.PathLike, params: Mapping, dim_ordering: str = "tf") -> None:
    """Keras 1 save_weights as in fchollet/deep-learning-models v0.1: root attr layer_names, a group per layer
    (weightless ones too) with weight_names; "th" = OIHW flipped kernels and fc1 rows (c,h,w)."""
    flat = flatten(params)
    convs, top = _layers(params)
    suffix = "_1:0" if dim_ordering == "tf" else ":0"
    layers: list[tuple[str, list[tuple[str, np.ndarray]]]] = [("input_1", [])]
    block = "block1"
    for name in convs:
        if not name.startswith(block + "_"):
            layers.append((f"{block}_pool", []))
            block = name.split("_")[0]
        kernel = flat[f"{name}/kernel"]
        kernel = to_theano(kernel) if dim_ordering == "th" else kernel
        layers.append((name, [(f"{name}_W{suffix}", kernel), (f"{name}_b{suffix}", flat[f"{name}/bias"])]))
    layers.append((f"{block}_pool", []))
    if top:
        layers.append(("flatten", []))
        for name in arch.TOP_LAYERS:
            kernel = flat[f"{name}/kernel"]
            if name == "fc1" and dim_ordering == "th":
                kernel = fc1_to_chw(kernel)
            layers.append((name, [(f"{name}_W{suffix}", kernel), (f"{name}_b{suffix}", flat[f"{name}/bias"])]))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        for name, weights in layers:
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in weights], dtype="S")
            for w, a in weights:
                g.create_dataset(w, data=a)


def random_params(depths: tuple[int, ...] = arch.DEPTHS["vgg16"], include_top: bool = True, seed: int = 0) -> dict:
    """Canonical VGG params with He-normal kernels and small random biases (activations keep their
    scale through every layer, so parity checks compare meaningful numbers)."""
    rng = np.random.default_rng(seed)
    params: dict = {}
    for key, shape in arch.param_shapes(tuple(depths), include_top=include_top).items():
        layer, kind = key.split("/")
        if kind == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
        else:
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
        params.setdefault(layer, {})[kind] = value
    return params
