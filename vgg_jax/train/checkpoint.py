"""Training checkpoints that survive a kill at any moment.

RUN/checkpoints/<step>/ holds `state/` (the TrainState pytree, written by orbax, which handles sharded and
multi-host arrays), `meta.json` (data position, validation loss, the state's shapes) and `COMMIT`. Each is
written inside a temp folder of our naming, and the folder is renamed to <step> only after COMMIT: a
folder named by a step is complete, or was damaged afterwards. Retention (the last N plus the best by
validation loss) is decided from every kept checkpoint's meta.json, so a resumed run keeps what an
uninterrupted one keeps. Reading passes over incomplete or damaged checkpoints, naming them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vgg_jax.errors import UserError
from vgg_jax.faults import maybe_kill
from vgg_jax.fileio import TEMP_PREFIX, atomic_path, clean_stale_temps, temp_name

META = "meta.json"
COMMIT = "COMMIT"
STATE = "state"


@dataclass(frozen=True)
class Position:
    """Where training stands: the next batch to run is `batch` of `epoch`."""

    epoch: int
    batch: int


class CheckpointDamaged(UserError):
    """A checkpoint folder that cannot be read back (killed mid-write before vgg-jax 0.2, or files lost since)."""


def shapes_of(tree: Any) -> list[list]:
    """[path, shape, dtype] of every leaf: recorded at save, compared at restore to tell a mismatch from damage."""
    return [
        [jax.tree_util.keystr(path), list(np.shape(leaf)), str(getattr(leaf, "dtype", np.asarray(leaf).dtype))]
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    ]


class Checkpoints:
    """The checkpoints of one run folder. `writer=True` (the training process) may save, prune and clean up."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, writer: bool = False, lead: bool = True):
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.lead = lead  # multi-host: only the first process creates, commits and deletes folders
        self._orbax = None
        if writer and lead:
            self.directory.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(self.directory)

    # -- reading -----------------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps of the checkpoint folders present, ascending (complete or not: `problem` tells)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def problem(self, step: int) -> str | None:
        """Why checkpoint `step` cannot be used, from a cheap look at its files; None if it looks whole."""
        folder = self.directory / str(step)
        if not (folder / COMMIT).is_file():
            return "is incomplete (no COMMIT marker: killed while writing, or written by vgg-jax before 0.2)"
        try:
            json.loads((folder / META).read_text())
        except (OSError, ValueError) as e:
            return f"is damaged ({META} unreadable: {type(e).__name__})"
        if not (folder / STATE / "_CHECKPOINT_METADATA").is_file():
            return f"is damaged ({STATE}/ has lost its files)"
        return None

    def meta(self, step: int) -> dict:
        return json.loads((self.directory / str(step) / META).read_text())

    def latest_step(self) -> int | None:
        """The newest checkpoint that looks whole (None if there is none)."""
        good = [s for s in self.steps() if self.problem(s) is None]
        return good[-1] if good else None

    def ranked(self, which: str = "latest") -> list[int]:
        """Whole-looking steps in order of preference: newest first, or for "best" lowest validation loss
        first (epoch ends carry one) and then the rest newest first."""
        good = [s for s in reversed(self.steps()) if self.problem(s) is None]
        if which == "best":
            scored = sorted((self.meta(s)["val_loss"], -s) for s in good if _finite(self.meta(s).get("val_loss")))
            best = [-s for _, s in scored]
            good = best + [s for s in good if s not in best]
        return good

    def best_step(self) -> int | None:
        ranked = self.ranked("best")
        return ranked[0] if ranked else None

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """(state shaped like `like`, meta) of checkpoint `step`. A checkpoint of another model raises UserError;
        one that cannot be read raises CheckpointDamaged."""
        folder = self.directory / str(step)
        if (why := self.problem(step)) is not None:
            raise CheckpointDamaged(f"{folder}: checkpoint {step} {why}")
        meta = self.meta(step)
        want = shapes_of(like)
        if meta.get("shapes") != want:
            got = meta.get("shapes") or []
            diff = next(
                (f"{g[0]} {g[1]} vs {w[1]}" for g, w in zip(got, want) if g != w), f"{len(got)} vs {len(want)} arrays"
            )
            raise UserError(f"{folder}: checkpoint does not fit this model ({diff})")
        ocp = _ocp()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._checkpointer().restore(folder / STATE, abstract)
        except Exception as e:
            _quiet_orphaned_futures()
            raise CheckpointDamaged(f"{folder}: checkpoint {step} is damaged ({_damage(e)})") from None
        # Orbax hands back optax's NamedTuple states as plain tuples: put like's structure back.
        return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(restored)), meta

    def restore_params(self, step: int, like: Any) -> tuple[Any, dict]:
        """(trained params shaped like `like`, meta) of checkpoint `step`, read alone by orbax's partial restore:
        inference builds no optimizer and reads no optimizer state. Errors as `restore`."""
        folder = self.directory / str(step)
        if (why := self.problem(step)) is not None:
            raise CheckpointDamaged(f"{folder}: checkpoint {step} {why}")
        meta = self.meta(step)
        recorded = [[p[len(".params") :], *rest] for p, *rest in meta.get("shapes") or [] if p.startswith(".params")]
        want = shapes_of(like)
        if recorded != want:
            diff = next((f"{g[0]} {g[1]} vs {w[1]}" for g, w in zip(recorded, want) if g != w),
                        f"{len(recorded)} vs {len(want)} arrays")  # fmt: skip
            raise UserError(f"{folder}: checkpoint does not fit this model ({diff})")
        ocp = _ocp()
        abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
        restore = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                         partial_restore=True)  # fmt: skip
        try:
            with ocp.PyTreeCheckpointer() as reader:
                restored = reader.restore(folder / STATE, args=restore)
        except Exception as e:
            _quiet_orphaned_futures()
            raise CheckpointDamaged(f"{folder}: checkpoint {step} is damaged ({_damage(e)})") from None
        return restored["params"], meta

    def restore_good(
        self, like: Any, which: str | int = "latest", say=print, params_only: bool = False
    ) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the preferred usable checkpoint ("latest", "best" or a step), passing over
        incomplete or damaged ones with one line each; None when the run has no usable checkpoint. With
        `params_only`, `like` and the result are the trained params alone (restore_params)."""
        read = self.restore_params if params_only else self.restore
        if isinstance(which, int):
            return which, *read(which, like)
        skipped = [(s, why) for s in reversed(self.steps()) if (why := self.problem(s)) is not None]
        for step in self.ranked(which):
            try:
                state, meta = read(step, like)
            except CheckpointDamaged as e:
                skipped.append((step, str(e).split(f"checkpoint {step} ", 1)[-1]))
                continue
            for bad, why in sorted(skipped, reverse=True):
                say(f"checkpoint {bad} {why}; using {step}")
            return step, state, meta
        for bad, why in sorted(skipped, reverse=True):
            say(f"checkpoint {bad} {why}; no other checkpoint to use")
        return None

    # -- writing -----------------------------------------------------------------------------------------

    def save(self, step: int, state: Any, position: Position, val_loss: float | None = None) -> None:
        """Writes checkpoint `step` (all processes call this), commits it, then applies retention."""
        meta = {
            "step": step, "epoch": position.epoch, "batch": position.batch,
            "val_loss": float(val_loss) if _finite(val_loss) else None, "shapes": shapes_of(state),
        }  # fmt: skip
        tmp = self._shared_temp(step)
        if self.lead:
            tmp.mkdir()
        _sync(f"checkpoint {step} folder")
        maybe_kill("checkpoint-before-state")
        try:
            self._checkpointer().save(tmp / STATE, state)
            self._checkpointer().wait_until_finished()
        except Exception as e:  # tensorstore reports a full disk as ValueError
            if self.lead:
                shutil.rmtree(tmp, ignore_errors=True)
            if (why := _environmental(e)) is None:
                raise
            raise UserError(f"{self.directory}: cannot write checkpoint {step} ({why})") from None
        maybe_kill("checkpoint-after-state")
        if self.lead:
            with atomic_path(tmp / META) as f:
                f.write_text(json.dumps(meta, indent=1))
            maybe_kill("checkpoint-before-commit")
            with atomic_path(tmp / COMMIT) as f:
                f.write_text(f"{step}\n")
            final = self.directory / str(step)
            if final.exists():  # a damaged checkpoint of this step, passed over on resume
                _remove(final)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
            maybe_kill("checkpoint-after-commit")
            self._prune()
        _sync(f"checkpoint {step}")

    def _prune(self) -> None:
        """Keeps the last `keep` checkpoints and the best by validation loss; removes incomplete ones."""
        steps = self.steps()
        whole = [s for s in steps if self.problem(s) is None]
        keep = set(whole[-self.keep :])
        if (best := self.ranked("best")) and _finite(self.meta(best[0]).get("val_loss")):
            keep.add(best[0])
        for step in steps:
            if step not in keep:
                _remove(self.directory / str(step))
                maybe_kill("checkpoint-mid-prune")

    def _shared_temp(self, step: int) -> Path:
        """The temp folder every process writes this checkpoint into (same name on every host)."""
        if jax.process_count() == 1:
            return temp_name(self.directory / f"checkpoint-{step}")
        from jax.experimental import multihost_utils

        pid = int(multihost_utils.broadcast_one_to_all(np.int64(os.getpid())))
        return self.directory / f"{TEMP_PREFIX}{pid}-{step}-checkpoint"

    def _checkpointer(self):
        if self._orbax is None:
            self._orbax = _ocp().StandardCheckpointer()
        return self._orbax

    def close(self) -> None:
        if self._orbax is not None:
            self._orbax.close()
            self._orbax = None


def _remove(folder: Path) -> None:
    """Renames a checkpoint folder out of the way before deleting it: a kill mid-delete leaves a temp folder
    (cleaned by the next run), never a half-deleted checkpoint under a step's name."""
    doomed = temp_name(folder)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and bool(np.isfinite(x))


def _environmental(e: BaseException) -> str | None:
    """'no space left on device' and the like when a write failed for a reason outside the program, else None."""
    text = str(e)
    for marker, why in (("No space left", "no space left on device"), ("Read-only file system", "read-only file system"),
                        ("Permission denied", "permission denied"), ("Disk quota", "disk quota exceeded")):  # fmt: skip
        if marker in text:
            return why
    return None


def _damage(e: BaseException) -> str:
    """What a failed restore says, in a few words: tensorstore's own messages run to pages."""
    text = str(e).strip()
    if "TensorStore" in text or "array" in text.lower():
        return "its array files are missing or corrupt"
    lines = text.splitlines()
    return f"{type(e).__name__}: {lines[0][:120]}" if lines else type(e).__name__


def _quiet_orphaned_futures() -> None:
    """A failed orbax restore leaves asyncio futures whose errors asyncio logs, page-long, when they are collected;
    the one-line message has said it all."""
    import gc
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    gc.collect()


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _ocp():
    import orbax.checkpoint as ocp

    return ocp
