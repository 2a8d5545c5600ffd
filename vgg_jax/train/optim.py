"""The optimizer over the trainable params only: Adam or SGD+momentum, optional warmup+cosine,
per-group learning-rate multipliers, and gradient clipping that sees trainable gradients alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from vgg_jax.errors import UserError
from vgg_jax.models.freeze import group_of

OPTIMIZERS = ("adam", "sgd")


def schedule(lr: float, total_steps: int, warmup_steps: int = 0, cosine: bool = False) -> optax.Schedule:
    if not cosine:
        return optax.constant_schedule(lr) if not warmup_steps else optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, max(warmup_steps, 0), max(total_steps, warmup_steps + 1), end_value=0.0
    )


def make_optimizer(
    trainable: Mapping[str, Any],
    *,
    name: str = "adam",
    lr: float = 1e-3,
    total_steps: int = 1,
    warmup_steps: int = 0,
    cosine: bool = False,
    momentum: float = 0.9,
    clip_norm: float | None = None,
    lr_mults: Mapping[str, float] | None = None,
) -> optax.GradientTransformation:
    """An optax transformation for `trainable` (top-level layer -> params); frozen params never reach it."""
    if name not in OPTIMIZERS:
        raise UserError(f"`optimizer` must be one of {', '.join(OPTIMIZERS)}. Received: {name!r}")

    def base(factor: float) -> optax.GradientTransformation:
        sched = schedule(lr * factor, total_steps, warmup_steps, cosine)
        return optax.adam(sched) if name == "adam" else optax.sgd(sched, momentum=momentum)

    groups = {group_of(layer) for layer in trainable}
    mults = {g: f for g, f in (lr_mults or {}).items() if g in groups}
    if mults:
        factors = {g: mults.get(g, 1.0) for g in groups}
        labels = {layer: jax_tree_label(value, group_of(layer)) for layer, value in trainable.items()}
        tx = optax.partition({g: base(f) for g, f in factors.items()}, labels)
    else:
        tx = base(1.0)
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def jax_tree_label(subtree: Any, label: str) -> Any:
    """The same structure as `subtree` with every leaf replaced by `label` (optax.partition's labels)."""
    if isinstance(subtree, Mapping):
        return {k: jax_tree_label(v, label) for k, v in subtree.items()}
    return label
