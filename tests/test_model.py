"""The Flax VGG family: Keras names, Keras parameter counts, Keras output shapes and pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import SMALL_NET
from tests.keras_files import copy_weights
from vgg_jax import preprocess_input
from vgg_jax.models import arch, params_io
from vgg_jax.models.backbone import Backbone
from vgg_jax.models.classifier import Classifier
from vgg_jax.models.parity import rel_error
from vgg_jax.models.vgg import VGG

# Published counts (Keras applications for VGG16/19, torchvision's num_params for all four; the
# networks are identical in shape).
COUNTS = {
    ("vgg11", True): 132_863_336,
    ("vgg13", True): 133_047_848,
    ("vgg16", True): 138_357_544,
    ("vgg16", False): 14_714_688,
    ("vgg19", True): 143_667_240,
    ("vgg19", False): 20_024_384,
}


def shapes_of(model: VGG, size: int = 224) -> dict:
    tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
    return {k: tuple(v.shape) for k, v in params_io.flatten(tree).items()}


@pytest.mark.parametrize("name, include_top", list(COUNTS))
def test_parameter_counts_match_keras(name, include_top):
    shapes = shapes_of(VGG(depths=arch.DEPTHS[name], include_top=include_top))
    assert sum(int(np.prod(s)) for s in shapes.values()) == COUNTS[(name, include_top)]
    # The converter's pure-Python table agrees with the Flax module, key for key.
    assert shapes == arch.param_shapes(arch.DEPTHS[name], include_top=include_top)


def test_layer_names_are_keras_names():
    names = {k.split("/")[0] for k in shapes_of(VGG())}
    assert names == {*arch.conv_layer_names(arch.DEPTHS["vgg16"]), "fc1", "fc2", "predictions"}


@pytest.mark.parametrize(
    "kwargs, size, shape",
    [
        ({}, 224, (2, 1000)),
        ({"classes": 7}, 224, (2, 7)),
        ({"include_top": False}, 224, (2, 7, 7, 512)),
        ({"include_top": False}, 96, (2, 3, 3, 512)),
        ({"include_top": False, "pooling": "avg"}, 64, (2, 512)),
        ({"include_top": False, "pooling": "max"}, 64, (2, 512)),
    ],
)
def test_output_shapes(kwargs, size, shape):
    model = VGG(**kwargs)
    x = jnp.zeros((2, size, size, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == shape


def test_bad_pooling_is_a_keras_style_error():
    with pytest.raises(ValueError, match="Received: pooling='mean'"):
        jax.eval_shape(VGG(include_top=False, pooling="mean").init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("pooling", ["avg", "max", None])
def test_pooling_matches_keras(vgg16, pooling):
    """No-top features with Keras' pooling semantics, on a non-224 input size (allowed without the top)."""
    import keras

    k = keras.applications.VGG16(weights=None, include_top=False, pooling=pooling, input_shape=(64, 96, 3))
    copy_weights(vgg16.notop, k)
    images = np.random.default_rng(7).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    want = k.predict(keras.applications.vgg16.preprocess_input(images.astype(np.float32)), verbose=0)
    params = {l.name: {"kernel": l.get_weights()[0], "bias": l.get_weights()[1]} for l in k.layers if l.get_weights()}
    got = VGG(include_top=False, pooling=pooling).apply({"params": params}, preprocess_input(images))
    assert got.shape == want.shape
    assert rel_error(got, want) <= 1e-4


def test_bfloat16_compute_keeps_float32_params():
    model = VGG(**SMALL_NET, dtype=jnp.bfloat16)
    x = jnp.ones((1, 32, 32, 3))
    params = model.init(jax.random.key(0), x)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert model.apply({"params": params}, x).dtype == jnp.bfloat16


def test_vgg_and_classifier_compose_one_backbone():
    """Both networks hold the same Backbone class (composition, not one inheriting the other), and the Classifier
    carries none of VGG's Keras-only fields."""
    x = jnp.zeros((1, 32, 32, 3))
    for model in (VGG(**SMALL_NET), Classifier(**SMALL_NET)):
        bound = model.bind(jax.eval_shape(model.init, jax.random.key(0), x))
        assert type(bound.backbone) is Backbone
        assert (bound.backbone.depths, bound.backbone.widths) == (SMALL_NET["depths"], SMALL_NET["widths"])
    assert not issubclass(Classifier, VGG) and not issubclass(VGG, Classifier)
    fields = set(Classifier.__dataclass_fields__) - {"parent", "name"}
    assert fields == {"depths", "widths", "fc_units", "dtype", "top", "head_units", "dropout_rate"}


@pytest.mark.parametrize(
    "top, extra",
    [
        ("fc", {"head/kernel": (4096, 1), "head/bias": (1,)}),
        ("avg", {"head/kernel": (512, 1), "head/bias": (1,)}),
        ("mlp:7,5", {"mlp1/kernel": (25088, 7), "mlp1/bias": (7,), "mlp2/kernel": (7, 5), "mlp2/bias": (5,),
                     "head/kernel": (5, 1), "head/bias": (1,)}),
    ],
)  # fmt: skip
def test_classifier_params_are_the_flat_keras_names(top, extra):
    """The Classifier's params are flat like every params file and checkpoint: the converter's VGG16 table
    (with fc1/fc2 for the fc top), less `predictions`, plus the new layers; no `backbone` level."""
    keras = arch.param_shapes(arch.DEPTHS["vgg16"], include_top=top == "fc")
    want = {k: v for k, v in keras.items() if not k.startswith("predictions/")} | extra
    assert shapes_of(Classifier(top=top)) == want
