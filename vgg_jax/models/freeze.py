"""Freeze policies: split params into (trainable, frozen) before differentiating, and per-group learning rates.

`--freeze-through X` freezes X and everything below it; layers are ordered
block1 < ... < block5 < fc1 < fc2 < head, and the head is always trained.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vgg_jax.errors import UserError

ORDER = ("block1", "block2", "block3", "block4", "block5", "fc1", "fc2", "head")
POLICIES = ("fc2", "fc1", "block5", "block4", "block3", "block2", "block1", "none")


def group_of(layer: str) -> str:
    """'block3_conv2' -> 'block3'; 'fc1' -> 'fc1'; 'head' and 'mlp1' -> 'head'."""
    match = re.match(r"(block\d+)_conv\d+$", layer)
    if match:
        return match.group(1)
    return "head" if re.fullmatch(r"mlp\d+", layer) else layer  # an MLP top's new layers train with the head


def trainable_layers(params: Mapping[str, Any], freeze_through: str) -> set[str]:
    """Names of the top-level layers left trainable by the policy; errors if it matches nothing."""
    if freeze_through not in POLICIES:
        raise UserError(f"`freeze_through` must be one of {', '.join(POLICIES)}. Received: {freeze_through!r}")
    groups = {group_of(layer) for layer in params}
    # fc1/fc2 on a top without them (pooled, MLP) mean what they mean on the fc top: everything below the head.
    no_fc = freeze_through in ("fc1", "fc2") and not groups & {"fc1", "fc2"}
    if freeze_through != "none" and freeze_through not in groups and not no_fc:
        raise UserError(
            f"`freeze_through={freeze_through}` matches no parameter; this model has {', '.join(g for g in ORDER if g in groups)}"
        )
    cut = -1 if freeze_through == "none" else ORDER.index(freeze_through)
    trainable = {layer for layer in params if ORDER.index(group_of(layer)) > cut}
    if not trainable:
        raise UserError(f"`freeze_through={freeze_through}` leaves nothing trainable")
    return trainable


def split(params: Mapping[str, Any], freeze_through: str) -> tuple[dict, dict]:
    """-> (trainable, frozen), two disjoint dicts of top-level layers covering `params`."""
    keep = trainable_layers(params, freeze_through)
    return {k: v for k, v in params.items() if k in keep}, {k: v for k, v in params.items() if k not in keep}


def merge(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
    return {**frozen, **trainable}


def parse_lr_mults(spec: str | None, freeze_through: str | None = None) -> dict[str, float]:
    """'conv=0.1,fc=0.5,block5=1' -> {'block1': 0.1, ..., 'block5': 1.0, 'fc1': 0.5, 'fc2': 0.5}.

    `conv` stands for every block, `fc` for fc1 and fc2; later entries override earlier ones. With
    `freeze_through`, an item whose groups are all frozen is an error naming it.
    """
    mults: dict[str, float] = {}
    for item in filter(None, (spec or "").split(",")):
        name, _, value = item.partition("=")
        name = name.strip()
        try:
            factor = float(value)
        except ValueError:
            raise UserError(f"`lr_mult` expects GROUP=FACTOR items (e.g. conv=0.1). Received: {item!r}") from None
        if factor <= 0:
            raise UserError(f"`lr_mult={name}={value}`: factors must be > 0; freeze with `freeze_through` instead")
        groups = {"conv": ORDER[:5], "fc": ("fc1", "fc2")}.get(name, (name,))
        for group in groups:
            if group not in ORDER:
                raise UserError(f"`lr_mult`: unknown group {name!r}; use conv, fc, {', '.join(ORDER)}")
            mults[group] = factor
        if freeze_through and all(_frozen(g, freeze_through) for g in groups):
            raise UserError(
                f"`lr_mult={item.strip()}`: {name} is frozen by `freeze_through={freeze_through}`; "
                "drop it or freeze less"
            )
    return mults


def _frozen(group: str, freeze_through: str) -> bool:
    return freeze_through in ORDER and ORDER.index(group) <= ORDER.index(freeze_through)
