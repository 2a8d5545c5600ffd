"""A run's network as a serialized `jax.export` function: uint8 [N, S, S, 3] RGB images -> float32 probabilities.

The params are closed over (constants in the StableHLO module), caffe preprocessing runs inside, the batch
dimension is symbolic, and the module is lowered for CPU, CUDA and TPU, so

    exp = jax.export.deserialize(open("m.jaxexport", "rb").read()); probs = exp.call(images)

runs with jax alone, on any of these, without vgg_jax installed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax.fileio import atomic_path
from vgg_jax.inference.predictor import probabilities_fn
from vgg_jax.models.classifier import Classifier

PLATFORMS = ("cpu", "cuda", "tpu")


def exported(model: Classifier, params: dict, image_size: int, platforms: tuple[str, ...] = PLATFORMS):
    """The `jax.export.Exported` of `probabilities_fn`, polymorphic in the batch size."""
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.uint8)
    constants = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    fn = partial(probabilities_fn(model), constants)
    return jax.export.export(jax.jit(fn), platforms=platforms)(spec)


def write_stablehlo(out: str | Path, model: Classifier, params: dict, image_size: int) -> None:
    """Serializes the exported function to `out`, atomically."""
    data = exported(model, params, image_size).serialize()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
