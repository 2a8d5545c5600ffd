"""The run folder: run.json (configuration and fingerprints), metrics.jsonl, curves.png, checkpoints/, and
`.lock`, held by the one training process that may write here."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from vgg_jax.errors import UserError
from vgg_jax.faults import maybe_kill, maybe_pause
from vgg_jax.fileio import TEMP_PREFIX, atomic_path, clean_stale_temps, os_reason
from vgg_jax.train.config import RUN_LOCAL_FIELDS, TrainConfig

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
RUN_FILES = ("checkpoints", "metrics.jsonl", "curves.png", "eval", RUN_FILE)


def read_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: not a vgg-jax run folder (no {RUN_FILE})") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None


class RunLock:
    """An exclusive flock on RUN/.lock for the whole run. The kernel drops it when the process dies, so a
    killed run never blocks its own --resume."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"{run_dir}: cannot write in the run folder ({os_reason(e)})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(
                    f"{run_dir}: another vgg-jax train (pid {holder}) is running in this folder; "
                    "wait for it to finish or choose another `out`"
                ) from None
            raise UserError(f"{run_dir}: cannot lock the run folder ({os_reason(e)})") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


class RunFolder:
    """A run folder opened for training: locked, checked against --resume/--overwrite. If the run fails
    before its first checkpoint, `abandon()` removes what this start created, so a retry is not refused."""

    def __init__(self, cfg: TrainConfig, resume: bool, overwrite: bool):
        self.path = Path(cfg.out)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: exists and is not a folder; choose another `out`")
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.path}: cannot create the run folder ({os_reason(e)})") from None
        self.lock = RunLock(self.path)  # on failure the folder is another run's: touch nothing
        maybe_pause("run-locked")
        try:
            self.fresh = self._check(cfg, resume, overwrite)
        except BaseException:
            self.release()
            raise
        clean_stale_temps(self.path)

    def _check(self, cfg: TrainConfig, resume: bool, overwrite: bool) -> bool:
        """True for a new run, False when resuming; refuses a folder holding another run unless overwrite."""
        existing = (self.path / RUN_FILE).exists()
        if resume:
            if not existing:
                raise UserError(f"{self.path}: nothing to resume (no {RUN_FILE}); drop `resume` to start a new run")
            old = TrainConfig.from_json(read_run(self.path)["config"])
            changed = sorted(
                k for k, v in cfg.to_json().items() if k not in RUN_LOCAL_FIELDS and old.to_json().get(k) != v
            )
            if changed:
                raise UserError(
                    f"{self.path}: `resume` with a different configuration ({', '.join(changed)}); "
                    "start a new run folder instead"
                )
            return False
        if existing and not overwrite:
            raise UserError(
                f"{self.path}: already holds a run; use `resume` to continue it, `overwrite` to replace it, or another `out`"
            )
        if existing:
            self._remove_run_files()
        elif any(p.name != LOCK_FILE and not p.name.startswith(TEMP_PREFIX) for p in self.path.iterdir()):
            raise UserError(f"{self.path}: folder exists and is not empty; choose another `out` or use `overwrite`")
        return True

    def _remove_run_files(self) -> None:
        for name in RUN_FILES:
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)

    def abandon(self) -> None:
        """After a failed start of a new run with no checkpoint yet: remove what this start wrote."""
        checkpoints = self.path / "checkpoints"
        if self.fresh and not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            self._remove_run_files()
            if self.created:
                self.release()
                shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        self.lock.release()


def write_run(run_dir: Path, info: dict[str, Any]) -> None:
    with atomic_path(run_dir / RUN_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True))


def json_safe(value: Any) -> Any:
    """NaN and inf become null: metrics.jsonl stays valid JSON whatever the loss does."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class Metrics:
    """metrics.jsonl: one JSON object per line. On resume, lines past the restored step are dropped, and so is
    a line torn by a kill mid-append (with a note)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, say=print):
        self.path = run_dir / "metrics.jsonl"
        self.rows: list[dict] = []
        if resume_step is not None and self.path.exists():
            torn = 0
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    torn += 1
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= resume_step:
                    self.rows.append(row)
            if torn:
                say(f"{self.path}: dropped {torn} torn line(s) (a kill while appending)")
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in self.rows))

    def log(self, **row: Any) -> None:
        row = json_safe(row)
        self.rows.append(row)
        line = json.dumps(row, allow_nan=False) + "\n"
        half = len(line) // 2
        with open(self.path, "a") as f:
            f.write(line[:half])
            f.flush()
            maybe_kill("metrics-mid-line")
            f.write(line[half:])

    def plot(self, path: Path) -> None:
        """curves.png: training loss per log interval, validation loss and accuracy per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(kind: str, key: str) -> tuple[list, list]:
            rows = [r for r in self.rows if r.get("kind") == kind]
            return [r["step"] for r in rows], [float("nan") if r.get(key) is None else r[key] for r in rows]

        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(*series("train", "loss"), label="train loss", alpha=0.7)
        ax_loss.plot(*series("valid", "loss"), "o-", label="valid loss")
        ax_acc.plot(*series("train", "accuracy"), label="train accuracy", alpha=0.7)
        ax_acc.plot(*series("valid", "accuracy"), "o-", label="valid accuracy")
        for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.set_xlabel("step")
            ax.set_title(name)
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
