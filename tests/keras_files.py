"""Real Keras models with random weights, and weight files written by real Keras (and, for the
Theano-era layouts no Keras writes any more, by convert.legacy from the same weights)."""

from __future__ import annotations

import numpy as np


def randomize(model, seed: int) -> None:
    """He-normal kernels and non-zero biases, so activations keep their scale through 16 layers
    and a misplaced bias cannot hide behind Keras' zero init."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kernel, bias = weights
        fan_in = int(np.prod(kernel.shape[:-1]))
        layer.set_weights(
            [
                rng.normal(0, np.sqrt(2 / fan_in), kernel.shape).astype(np.float32),
                rng.normal(0, 0.1, bias.shape).astype(np.float32),
            ]
        )


def copy_weights(src, dst) -> None:
    """Copies weights layer by layer (matched by Keras name), e.g. into a no-top or tf-keras model."""
    by_name = {layer.name: layer for layer in src.layers}
    for layer in dst.layers:
        if layer.get_weights():
            layer.set_weights(by_name[layer.name].get_weights())


def canonical_params(model) -> dict:
    """{layer: {"kernel", "bias"}} straight from Keras: the canonical layout needs no transposes."""
    return {l.name: {"kernel": l.get_weights()[0], "bias": l.get_weights()[1]} for l in model.layers if l.get_weights()}


class KerasReference:
    """A Keras 3 model with random weights and its outputs through Keras' own preprocessing."""

    def __init__(self, name: str, seed: int, images: np.ndarray):
        import keras

        factory = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[name]
        self.name = name
        self.full = factory(weights=None, classifier_activation=None)
        randomize(self.full, seed)
        self.notop = factory(weights=None, include_top=False)
        copy_weights(self.full, self.notop)
        x = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
        self.logits = np.asarray(self.full.predict(x, verbose=0))
        self.features = np.asarray(self.notop.predict(x, verbose=0))
