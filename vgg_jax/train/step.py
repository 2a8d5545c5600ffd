"""Pure train and eval steps. Only the trainable params are differentiated and optimised; the frozen
ones ride along as a separate, non-donated argument, so no backbone gradient or Adam moment exists.

Jit them where they are called: `jax.jit(partial(train_step, apply_fn=..., tx=...), donate_argnums=0)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from vgg_jax.models.freeze import merge

# apply_fn(params, inputs, train, dropout_keys) -> float32 logits [B, units]; dropout_keys: one key per example
ApplyFn = Callable[[Mapping[str, Any], jax.Array, bool, jax.Array], jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict  # trainable only
    opt_state: optax.OptState
    rng: (
        jax.Array
    )  # base key; example row r of step k uses fold_in(fold_in(rng, k), r): resumed runs draw the same masks


def create_state(trainable: Mapping[str, Any], tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        jnp.zeros((), jnp.int32), dict(trainable), tx.init(trainable), jax.random.key_data(jax.random.key(seed))
    )


def losses(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example loss: binary cross-entropy on one sigmoid unit, else softmax cross-entropy."""
    if logits.shape[-1] == 1:
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def predictions(logits: jax.Array) -> jax.Array:
    """Predicted class per example."""
    return (logits[:, 0] > 0).astype(jnp.int32) if logits.shape[-1] == 1 else jnp.argmax(logits, -1).astype(jnp.int32)


def probabilities(logits: jax.Array) -> jax.Array:
    """[B, classes] probabilities (two columns for the sigmoid head: P(class 0), P(class 1))."""
    if logits.shape[-1] == 1:
        p1 = jax.nn.sigmoid(logits[:, 0])
        return jnp.stack([1 - p1, p1], axis=-1)
    return jax.nn.softmax(logits, axis=-1)


def dropout_keys(rng: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
    """One PRNG key per example row of a step: keyed by (step, row), so the masks depend on nothing else
    (not on whether the inputs are images or cached features, nor on how the batch is sharded)."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
    return jax.vmap(lambda row: jax.random.fold_in(step_key, row))(jnp.arange(batch_size))


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def train_step(
    state: TrainState,
    frozen: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on batch {"inputs", "label", "mask"}; returns the new state and mean loss/accuracy."""
    keys = dropout_keys(state.rng, state.step, batch["label"].shape[0])

    def loss_fn(trainable):
        logits = apply_fn(merge(trainable, frozen), batch["inputs"], True, keys)
        return _masked_mean(losses(logits, batch["label"]), batch["mask"]), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = _masked_mean((predictions(logits) == batch["label"]).astype(jnp.float32), batch["mask"])
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    # The state about to be kept must be finite too: a NaN update (lr, clipping, Adam) can follow a finite loss.
    finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    return new_state, {"loss": loss, "accuracy": accuracy, "finite": finite}


def eval_step(
    trainable: Mapping[str, Any],
    frozen: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    apply_fn: ApplyFn,
) -> dict[str, jax.Array]:
    """Sums over the real (mask=True) examples, plus per-example probabilities for predict/confusion."""
    logits = apply_fn(merge(trainable, frozen), batch["inputs"], False, None)
    mask = batch["mask"].astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(losses(logits, batch["label"]) * mask),
        "correct": jnp.sum((predictions(logits) == batch["label"]) * mask),
        "count": jnp.sum(mask),
        "probs": probabilities(logits),
    }
