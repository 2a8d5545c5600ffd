"""A run's network as a TensorFlow SavedModel through jax2tf, for TF Serving and TFLite.

The `serving_default` signature takes uint8 [N, S, S, 3] RGB images (`images`) and returns float32
probabilities (`probabilities`), as the jax.export artifact does; the params are tf.Variables (not graph
constants), so the full VGG16 stays clear of the 2 GB GraphDef limit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_folder
from vgg_jax.models.classifier import Classifier


def import_tensorflow():
    """tensorflow, or a one-line UserError saying the savedmodel format needs it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise UserError("the savedmodel format needs TensorFlow; pip install tensorflow") from None
    return tf


def write_savedmodel(out: str | Path, model: Classifier, params: dict, image_size: int) -> None:
    """tf.saved_model.save of the jax2tf-converted network into a temp folder beside `out`, renamed to `out`."""
    from jax.experimental import jax2tf

    from vgg_jax.inference.export_hlo import PLATFORMS
    from vgg_jax.inference.predictor import probabilities_fn

    tf = import_tensorflow()
    variables = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a, np.float32), trainable=False), params)
    spec = f"(b, {image_size}, {image_size}, 3)"
    converted = jax2tf.convert(
        probabilities_fn(model),
        polymorphic_shapes=[None, spec],
        with_gradient=False,
        native_serialization_platforms=PLATFORMS,
    )
    module = tf.Module()
    module.params = variables
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images")]
    module.serve = tf.function(
        lambda images: {"probabilities": converted(module.params, images)}, input_signature=signature, autograph=False
    )
    with atomic_folder(out) as tmp:
        try:
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        except tf.errors.OpError as e:  # TensorFlow's own file errors (a full disk: ResourceExhaustedError)
            reason = "no space left on device" if "No space left" in e.message else e.message.splitlines()[0]
            raise UserError(f"{out}: cannot write ({reason})") from None
