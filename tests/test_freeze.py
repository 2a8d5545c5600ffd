"""Freeze policies partition the params, and per-group learning-rate multipliers parse strictly."""

import pytest

from vgg_jax import UserError
from vgg_jax.freeze import merge, parse_lr_mults, split

LAYERS = [f"block{b}_conv{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)] + [
    "fc1",
    "fc2",
    "head",
]
PARAMS = {name: {"kernel": i} for i, name in enumerate(LAYERS)}


@pytest.mark.parametrize(
    "policy, trainable",
    [
        ("fc2", {"head"}),
        ("fc1", {"fc2", "head"}),
        ("block5", {"fc1", "fc2", "head"}),
        ("block4", {"block5_conv1", "block5_conv2", "block5_conv3", "fc1", "fc2", "head"}),
        ("none", set(LAYERS)),
    ],
)
def test_policies(policy, trainable):
    t, f = split(PARAMS, policy)
    assert set(t) == trainable and set(t).isdisjoint(f) and set(t) | set(f) == set(LAYERS)
    assert merge(t, f) == PARAMS


def test_block1_leaves_block1_frozen_only():
    t, f = split(PARAMS, "block1")
    assert set(f) == {"block1_conv1", "block1_conv2"}


def test_policy_matching_nothing_is_an_error():
    pooled = {k: v for k, v in PARAMS.items() if k not in ("fc1", "fc2")}  # top="avg": no fc layers
    with pytest.raises(UserError, match="--freeze-through fc1 matches no parameter"):
        split(pooled, "fc1")
    with pytest.raises(UserError, match="must be one of"):
        split(PARAMS, "block9")


def test_nothing_trainable_is_an_error():
    with pytest.raises(UserError, match="leaves nothing trainable"):
        split({k: v for k, v in PARAMS.items() if k != "head"}, "fc2")


def test_lr_mults():
    assert parse_lr_mults("conv=0.1,fc=0.5,block5=1") == {
        **{f"block{i}": 0.1 for i in range(1, 5)},
        "block5": 1.0,
        "fc1": 0.5,
        "fc2": 0.5,
    }
    assert parse_lr_mults(None) == {}
    for bad in ("conv", "conv=x", "conv=0", "layer9=2"):
        with pytest.raises(UserError):
            parse_lr_mults(bad)
