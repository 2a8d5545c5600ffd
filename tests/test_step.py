"""The jitted step: it updates and optimises the trainable params alone, and its compiled cost shows the frozen
backbone is never differentiated (XLA cost analysis, not wall time). Masking: tests/test_masking.py."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import SMALL_NET
from vgg_jax.models.classifier import Classifier, image_apply_fn
from vgg_jax.models.freeze import POLICIES, split
from vgg_jax.train.optim import make_optimizer
from vgg_jax.models.preprocess import preprocess_input
from vgg_jax.train.step import create_state, dropout_keys, train_step


def small_batch(n=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "inputs": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, 2, n).astype(np.int32),
        "mask": np.ones(n, bool),
    }


def init(model, size=32, seed=0):
    return model.init({"params": jax.random.key(seed), "dropout": jax.random.key(1)}, jnp.zeros((1, size, size, 3)))[
        "params"
    ]


def flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.mark.parametrize("policy", POLICIES)
def test_step_updates_and_optimises_only_the_trainable_params(policy):
    """The new state holds exactly the trainable params, every one moved, and optimizer state for them alone.
    (That the frozen params stay as loaded, through the trainer's own jit, is tests/test_freeze.py's.)"""
    model = Classifier(**SMALL_NET)
    trainable, frozen = split(init(model), policy)
    tx = make_optimizer(trainable, lr=1e-2)
    step = jax.jit(partial(train_step, apply_fn=image_apply_fn(model), tx=tx))
    state = create_state(trainable, tx, seed=0)
    start = state
    for i in range(3):
        state, metrics = step(state, frozen, small_batch(seed=i))
        assert bool(metrics["finite"]), f"{policy}, batch seed {i}: non-finite loss"
    assert jax.tree.structure(state.params) == jax.tree.structure(trainable), f"{policy}: params beyond the trainable"
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(trainable)), policy
    assert int(state.step) == 3
    unmoved = [jax.tree_util.keystr(path) for (path, a), b in
               zip(jax.tree_util.tree_flatten_with_path(state.params)[0], jax.tree.leaves(start.params))
               if np.array_equal(np.asarray(a), np.asarray(b))]  # fmt: skip
    assert not unmoved, f"{policy}, batch seeds 0-2: trainable params that did not move: {unmoved}"


def test_recipe_optimizer_state_is_head_sized():
    model = Classifier()  # full VGG16 + 1-unit head
    params = jax.eval_shape(lambda: init(model, size=224))
    trainable, _ = split(params, "fc2")
    state = jax.eval_shape(lambda t: make_optimizer(t).init(t), trainable)
    opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    head_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainable))
    print(
        f"recipe policy: Adam state {opt_bytes:,} bytes for a {head_bytes:,}-byte head ({opt_bytes / head_bytes:.2f}x)"
    )
    assert head_bytes == 4097 * 4 and opt_bytes <= 3 * head_bytes


@pytest.fixture(scope="module")
def vgg16_costs():
    """Compiled FLOPs of full-size VGG16 (224x224, batch 2) for the forward and several steps."""
    model = Classifier()
    params = jax.eval_shape(lambda: init(model, size=224))
    batch = {
        "inputs": jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((2,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((2,), jnp.bool_),
    }
    costs = {"forward": flops(lambda p, x: model.apply({"params": p}, preprocess_input(x)), params, batch["inputs"])}

    def step_cost(policy, clip=None):
        trainable, frozen = split(params, policy)
        m = Classifier()
        tx = make_optimizer(trainable, clip_norm=clip)
        state = jax.eval_shape(lambda t: create_state(t, tx, 0), trainable)
        return flops(partial(train_step, apply_fn=image_apply_fn(m), tx=tx), state, frozen, batch)

    costs["fc2"] = step_cost("fc2")
    costs["fc2 + clip"] = step_cost("fc2", clip=1.0)
    costs["block4 (fine-tune block5)"] = step_cost("block4")
    costs["none (full fine-tune)"] = step_cost("none")

    # The trap PEERS.md measured: grads of everything, masked afterwards by an optimizer that reads them.
    frozen_mask = {k: jax.tree.map(lambda _, frozen=k != "head": frozen, v) for k, v in params.items()}
    tx = optax.chain(optax.adam(1e-3), optax.masked(optax.set_to_zero(), frozen_mask))

    def naive(p, opt, b):
        logits = lambda q: model.apply({"params": q}, preprocess_input(b["inputs"]))[:, 0]
        g = jax.grad(lambda q: optax.sigmoid_binary_cross_entropy(logits(q), b["label"].astype(jnp.float32)).mean())(p)
        u, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, u), opt

    costs["naive full grad + adam(all)"] = flops(naive, params, jax.eval_shape(tx.init, params), batch)
    for name, value in costs.items():
        print(f"{name:<30} {value / 2 / 1e9:8.2f} GFLOP/image")
    return costs


@pytest.mark.slow
def test_frozen_head_step_costs_one_forward(vgg16_costs):
    for variant in ("fc2", "fc2 + clip"):
        ratio = vgg16_costs[variant] / vgg16_costs["forward"]
        assert 0.95 <= ratio <= 1.05, f"{variant}: {ratio:.3f}x the forward's FLOPs"


@pytest.mark.slow
def test_block5_finetune_well_under_full(vgg16_costs):
    assert vgg16_costs["block4 (fine-tune block5)"] < 0.6 * vgg16_costs["none (full fine-tune)"]
    assert vgg16_costs["none (full fine-tune)"] > 2.5 * vgg16_costs["forward"]


@pytest.mark.slow
def test_cost_analysis_sees_the_naive_trap(vgg16_costs):
    """The measure can fail: the naive variant that differentiates the backbone costs ~3x."""
    assert vgg16_costs["naive full grad + adam(all)"] > 2.5 * vgg16_costs["forward"]


@pytest.mark.parametrize("rate", [0.5, 0.0])
def test_dropout_acts_in_training_only_and_follows_the_keys(rate):
    """Dropout after fc1/fc2 acts in training whatever is frozen (Keras' Dropout ignores `trainable`); the masks
    come from the per-example keys; evaluation and rate 0 are deterministic and equal."""
    batch = small_batch()
    model = Classifier(**SMALL_NET, dropout_rate=rate)
    params = init(model)
    apply = image_apply_fn(model)
    n = len(batch["label"])
    keys = lambda seed: dropout_keys(jax.random.key_data(jax.random.key(seed)), jnp.int32(0), n)  # noqa: E731
    a, b = (apply(params, batch["inputs"], True, keys(seed)) for seed in (1, 2))
    ev = apply(params, batch["inputs"], False, None)
    assert np.array_equal(a, apply(params, batch["inputs"], True, keys(1)))
    if rate:
        assert not np.allclose(a, b) and not np.allclose(a, ev)
    else:
        assert np.array_equal(a, ev) and np.array_equal(b, ev)


def test_learns_and_is_deterministic():
    model = Classifier(**SMALL_NET, head_units=3)  # softmax head
    batch = small_batch()
    batch["label"] = batch["label"] + (batch["inputs"].mean(axis=(1, 2, 3)) > 127)  # 3 classes
    results = []
    for _ in range(2):
        trainable, frozen = split(init(model), "none")
        tx = make_optimizer(trainable, lr=3e-3)
        step = jax.jit(partial(train_step, apply_fn=image_apply_fn(model), tx=tx), donate_argnums=0)
        state = create_state(trainable, tx, seed=0)
        first = None
        for _ in range(30):
            state, m = step(state, frozen, batch)
            first = first if first is not None else float(m["loss"])
        results.append((first, float(m["loss"]), jax.tree.map(np.asarray, state.params)))
    assert results[0][1] < 0.5 * results[0][0]
    jax.tree.map(np.testing.assert_array_equal, results[0][2], results[1][2])


def test_a_finite_loss_with_a_nan_update_is_reported_not_finite():
    """The guard looks at the params the step is about to keep, not only at the loss (computed before the update):
    an injected NaN in one update leaf, after a finite loss, must make the step report `finite` False."""
    model = Classifier(**SMALL_NET)
    trainable, frozen = split(init(model), "fc2")
    poisoned_leaf = "head"

    def poison(updates, params):
        return {k: jax.tree.map(lambda u: u * jnp.nan, v) if k == poisoned_leaf else v for k, v in updates.items()}

    for tx, want in ((optax.sgd(1e-2), True), (optax.chain(optax.sgd(1e-2), optax.stateless(poison)), False)):
        step = jax.jit(partial(train_step, apply_fn=image_apply_fn(model), tx=tx))
        state, metrics = step(create_state(trainable, tx, seed=0), frozen, small_batch())
        assert np.isfinite(float(metrics["loss"])), "the injected NaN must come after a finite loss"
        assert bool(metrics["finite"]) is want, f"update poisoned: {not want}; step reported finite={metrics['finite']}"
        assert np.isnan(np.asarray(state.params[poisoned_leaf]["kernel"])).all() is not want
