"""A run's network as a plain Keras 3 functional model: `.keras` (architecture + weights) or `.weights.h5`.

Layers are keras.layers only, named as `keras.applications.VGG16` names them (block1_conv1 .. block5_pool, flatten,
fc1, fc2) plus our `mlp1..` and `head`, so `keras.saving.load_model` loads the file in safe mode with no custom
objects. Weights copy across as they are: Flax kernels are HWIO like Keras', and fc1's rows are in the order of
Keras' channels-last Flatten. The model takes `keras.applications.vgg16.preprocess_input`-ed float32 images.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_path, temp_name
from vgg_jax.models import arch
from vgg_jax.models.classifier import POOLED_TOPS, mlp_units

WEIGHTS_MEMBER = "model.weights.h5"  # in a .keras archive


def import_keras():
    """keras, on its JAX backend when KERAS_BACKEND is unset and keras not yet imported (so no TensorFlow is
    needed); a one-line UserError when Keras 3 is not installed."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Keras' saving imports TensorFlow when it is installed
    try:
        import keras
    except ImportError:
        raise UserError("the keras and weights.h5 formats need Keras 3; pip install keras") from None
    if not keras.__version__.startswith("3."):
        raise UserError(
            f"the keras and weights.h5 formats need Keras 3, found {keras.__version__}; pip install -U keras"
        )
    return keras


def build_keras_model(meta: dict[str, Any]):
    """The exported architecture as a Keras functional model (fresh weights), from an export's sidecar JSON:
    what `model.load_weights("m.weights.h5")` needs."""
    keras = import_keras()
    layers = keras.layers
    size, widths = meta["image_size"], meta.get("widths") or arch.WIDTHS
    inputs = keras.Input((size, size, 3), name="input_layer")
    x = inputs
    for b, (depth, width) in enumerate(zip(arch.DEPTHS[meta["architecture"]], widths), 1):
        for i in range(1, depth + 1):
            x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"block{b}_conv{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    x = _top(layers, x, meta)
    activation = "sigmoid" if meta["head_units"] == 1 else "softmax"
    outputs = layers.Dense(meta["head_units"], activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name=f"{meta['architecture']}_{meta['top'].replace(':', '_')}")


def _top(layers, x, meta: dict[str, Any]):
    """The layers between block5_pool and the head; dropout only acts in training, as in the recipe."""
    top, rate = meta["top"], meta.get("dropout", 0.0)
    if top in POOLED_TOPS:
        pool = layers.GlobalAveragePooling2D if top == "avg" else layers.GlobalMaxPooling2D
        return pool(name=f"{top}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    names = ("fc1", "fc2") if top == "fc" else tuple(f"mlp{i}" for i in range(1, len(mlp_units(top)) + 1))
    units = (meta.get("fc_units") or arch.FC_UNITS,) * 2 if top == "fc" else mlp_units(top)
    for name, n in zip(names, units):
        x = layers.Dense(n, activation="relu", name=name)(x)
        if rate:
            x = layers.Dropout(rate, name=f"{name}_dropout")(x)
    return x


def keras_model(meta: dict[str, Any], params: dict):
    """The Keras model with our params set (float32, whatever dtype the run computed in)."""
    model = build_keras_model(meta)
    names = {layer.name for layer in model.layers if layer.weights}
    if names != set(params):
        raise ValueError(f"Keras layers {sorted(names)} do not match the params {sorted(params)}")
    for name, p in params.items():
        model.get_layer(name).set_weights([np.asarray(p["kernel"], np.float32), np.asarray(p["bias"], np.float32)])
    return model


def write_keras(out: str | Path, meta: dict[str, Any], params: dict) -> None:
    """`model.save` of the Keras model to `out` (.keras), atomically."""
    model = keras_model(meta, params)
    with atomic_path(out) as tmp:  # the temp name ends with out's name, so with the .keras Keras requires
        model.save(tmp)


def write_weights(out: str | Path, meta: dict[str, Any], params: dict) -> None:
    """The Keras model's weights as `out` (.weights.h5, what `model.save_weights` writes), atomically.

    Taken from the `model.weights.h5` member of a `.keras` archive saved beside `out` (the same Keras code writes
    both, with the same layout): `save_weights` itself, on a full disk, leaks HDF5 handles that print errors
    later and can crash the process."""
    model = keras_model(meta, params)
    scratch = temp_name(Path(f"{out}.keras"))
    try:
        with atomic_path(out) as tmp:
            model.save(scratch)
            with zipfile.ZipFile(scratch) as archive, archive.open(WEIGHTS_MEMBER) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    finally:
        scratch.unlink(missing_ok=True)
