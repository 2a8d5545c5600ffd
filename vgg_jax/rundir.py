"""The run folder: run.json (configuration and fingerprints), metrics.jsonl, curves.png, checkpoints/."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from vgg_jax.config import RUN_LOCAL_FIELDS, TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_path

RUN_FILE = "run.json"


def read_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: not a vgg-jax run folder (no {RUN_FILE})") from None
    except ValueError as e:
        raise UserError(f"{path}: unreadable ({e})") from None


def prepare(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """Creates or checks the run folder. A folder holding another run is refused unless overwrite."""
    run_dir = Path(cfg.out)
    existing = (run_dir / RUN_FILE).exists()
    if resume:
        if not existing:
            raise UserError(f"{run_dir}: nothing to resume (no {RUN_FILE}); drop --resume to start a new run")
        old = TrainConfig.from_json(read_run(run_dir)["config"])
        changed = sorted(k for k, v in cfg.to_json().items() if k not in RUN_LOCAL_FIELDS and old.to_json().get(k) != v)
        if changed:
            raise UserError(
                f"{run_dir}: --resume with a different configuration ({', '.join(changed)}); start a new run folder instead"
            )
        return run_dir
    if existing and not overwrite:
        raise UserError(
            f"{run_dir}: already holds a run; use --resume to continue it, --overwrite to replace it, or another --out"
        )
    if existing:
        for name in ("checkpoints", "metrics.jsonl", "curves.png", RUN_FILE):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir}: folder exists and is not empty; choose another --out or use --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_run(run_dir: Path, info: dict[str, Any]) -> None:
    with atomic_path(run_dir / RUN_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True))


class Metrics:
    """metrics.jsonl: one JSON object per line; on resume, lines past the restored step are dropped."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.rows: list[dict] = []
        if resume_step is not None and self.path.exists():
            self.rows = [
                r for r in map(json.loads, self.path.read_text().splitlines()) if r.get("step", 0) <= resume_step
            ]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def log(self, **row: Any) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, path: Path) -> None:
        """curves.png: training loss per log interval, validation loss and accuracy per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.rows if r["kind"] == "train"]
        valid = [r for r in self.rows if r["kind"] == "valid"]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", alpha=0.7)
        ax_loss.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid loss")
        ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train accuracy", alpha=0.7)
        ax_acc.plot([r["step"] for r in valid], [r["accuracy"] for r in valid], "o-", label="valid accuracy")
        for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.set_xlabel("step")
            ax.set_title(name)
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)


LEAD = True  # False on every process but the first of a multi-host job: only the first one talks


def say(message: str) -> None:
    if LEAD:
        print(message, flush=True, file=sys.stdout)
