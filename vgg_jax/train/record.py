"""run.json's record of a run: what it was started with (config, data, weights, sizes, versions, command) and
how it ended (the best validation row)."""

from __future__ import annotations

import datetime
import platform
import sys

import jax

import vgg_jax
from vgg_jax.models.classifier import mlp_units
from vgg_jax.models.weights import Weights
from vgg_jax.train.config import TrainConfig
from vgg_jax.train.network import param_bytes
from vgg_jax.train.parallel import Topology


def started(cfg: TrainConfig, train_src, valid_src, weights: Weights, state, frozen: dict, topo: Topology,
            cut: str | None) -> dict:  # fmt: skip
    """run.json at the start: everything the run's numbers depend on."""
    return {
        "config": cfg.to_json(),
        "classes": train_src.class_names,
        "data": {"train": train_src.fingerprint, "valid": valid_src.fingerprint, "train_examples": train_src.num_examples,
                 "valid_examples": valid_src.num_examples, "skipped": len(train_src.skipped) + len(valid_src.skipped)},
        "weights": {"path": weights.path, "sha256": weights.sha256},
        "input": {"resize": cfg.resize, "interpolation": cfg.interpolation, "image_size": cfg.image_size},
        "dropout": {"rate": cfg.dropout, "after": _dropout_layers(cfg.top), "in_training_even_if_frozen": True},
        "feature_cache": {"cut": cut, "dtype": cfg.cache_dtype},
        "params": {"trainable": param_bytes(state.params) // 4, "frozen": param_bytes(frozen) // 4,
                   "optimizer_state_bytes": param_bytes(state.opt_state)},
        "topology": {"devices": topo.mesh.size, "processes": topo.process_count, "platform": jax.devices()[0].platform},
        "versions": _versions(),
        "command": list(sys.argv),
        "started": _utc_now(),
    }  # fmt: skip


def finished(info: dict, rows: list[dict]) -> dict:
    """run.json at the end of training: the end time and the best validation row (lowest loss, as "best" keeps)."""
    valid = [r for r in rows if r.get("kind") == "valid" and r.get("loss") is not None]
    best = min(valid, key=lambda r: r["loss"], default=None)
    keep = ("loss", "accuracy", "step", "epoch")
    return {**info, "ended": _utc_now(), "best_valid": {k: best[k] for k in keep} if best else None}


def _versions() -> dict:
    """Versions of Python and of the packages a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    found = {
        name: of(dist)
        for name, dist in (("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"), ("orbax", "orbax-checkpoint"))
    }
    return {"vgg_jax": vgg_jax.__version__, "jax": jax.__version__, **found, "python": platform.python_version()}


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _dropout_layers(top: str) -> list[str]:
    if top == "fc":
        return ["fc1", "fc2"]
    return [f"mlp{i}" for i in range(1, len(mlp_units(top) or ()) + 1)]
