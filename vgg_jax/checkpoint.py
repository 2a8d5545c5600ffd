"""Training checkpoints through orbax: atomic (temp dir, then rename), keep the last N plus the best by
validation loss, and resumable: state (params, optimizer, RNG, step) plus the data position."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import jax

from vgg_jax.errors import UserError


@dataclass(frozen=True)
class Position:
    """Where training stands: the next batch to run is `batch` of `epoch`."""

    epoch: int
    batch: int


class Checkpoints:
    """Saves and restores {"state": TrainState pytree, "meta": JSON} under RUN/checkpoints/<step>."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        import orbax.checkpoint as ocp
        from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

        self._ocp = ocp
        policy = pp.AnyPreservationPolicy(
            [
                pp.LatestN(n=keep),
                # Lowest validation loss: sorted descending, the last one is the best.
                pp.BestN(
                    get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(create=True, cleanup_tmp_directories=True, preservation_policy=policy)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))

    def save(
        self, step: int, state: Any, position: Position, val_loss: float | None = None, extra: dict | None = None
    ) -> None:
        ocp = self._ocp
        meta = {"step": step, "epoch": position.epoch, "batch": position.batch, "val_loss": val_loss, **(extra or {})}
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics,
            force=True,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept checkpoint with the lowest validation loss (epoch ends carry one), else the latest."""
        ocp = self._ocp
        scored = []
        for step in self.manager.all_steps():
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            if meta.get("val_loss") is not None:
                scored.append((meta["val_loss"], step))
        return min(scored)[1] if scored else self.latest_step()

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """(state shaped like `like`, meta) of checkpoint `step`."""
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{self.manager.directory}/{step}: checkpoint does not fit this model ({str(e).splitlines()[0][:200]})"
            ) from None
        # Orbax hands back optax's NamedTuple states as plain tuples: put like's structure back.
        state = jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(restored["state"]))
        return state, restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
