"""vgg-jax: Keras' ImageNet VGG16 ported exactly to Flax, for fast transfer learning in JAX.

Imports are lazy so that `import vgg_jax` stays fast and the converter can use the
pure-Python parts (`vgg_jax.models.arch`, `vgg_jax.models.params_io`) without loading jax.
"""

from importlib import import_module

__version__ = "0.2.0"

_EXPORTS = {
    "VGG": "vgg_jax.models.vgg",
    "VGG11": "vgg_jax.api",
    "VGG13": "vgg_jax.api",
    "VGG16": "vgg_jax.api",
    "VGG19": "vgg_jax.api",
    "preprocess_input": "vgg_jax.models.preprocess",
    "decode_predictions": "vgg_jax.inference.classify",
    "load_image": "vgg_jax.data.image",
    "load": "vgg_jax.inference.predictor",
    "Predictor": "vgg_jax.inference.predictor",
    "load_params": ("vgg_jax.models.params_io", "load"),
    "save_params": ("vgg_jax.models.params_io", "save"),
    "UserError": "vgg_jax.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'vgg_jax' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(import_module(module), attr)


def __dir__() -> list[str]:
    """The public names (lazy ones included), for tab completion in notebooks."""
    return sorted({*__all__, "__version__"})
