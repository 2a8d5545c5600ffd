"""ImageNet top-k for one image: the sanity check that ported weights really are ImageNet VGG."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.models import arch
from vgg_jax.models.preprocess import preprocess_input
from vgg_jax.models.vgg import VGG


@cache
def imagenet_classes() -> list[tuple[str, str]]:
    """[(wnid, name)] for the 1000 ImageNet classes, in Keras' order (imagenet_class_index.json)."""
    table = json.loads(resources.files("vgg_jax").joinpath("imagenet_classes.json").read_text())
    return [tuple(table[str(i)]) for i in range(1000)]


def top_k(params: dict, arch_name: str, image: np.ndarray, k: int = 5) -> list[tuple[str, str, float]]:
    """[(wnid, name, probability)] of the k most likely ImageNet classes for a uint8 [224, 224, 3] image."""
    if "predictions" not in params:
        raise UserError("these weights have no classifier top (a no-top file); classify needs the full VGG file")
    classes = params["predictions"]["kernel"].shape[1]
    if classes != 1000:
        raise UserError(f"these weights have {classes} output classes, not ImageNet's 1000")
    model = VGG(depths=arch.DEPTHS[arch_name])
    probs = jax.jit(lambda p, x: model.apply({"params": p}, preprocess_input(x)))(params, jnp.asarray(image[None]))[0]
    return decode_predictions(np.asarray(probs)[None], top=k)[0]


def decode_predictions(preds: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Keras' `decode_predictions`: ImageNet probabilities [N, 1000] -> per row its `top` classes (wnid, name, p)."""
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise UserError(
            f"decode_predictions expects ImageNet probabilities of shape [N, 1000]. Received: shape {preds.shape}"
        )
    names = imagenet_classes()
    return [[(*names[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:top]] for row in preds]
