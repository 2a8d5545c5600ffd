"""`Source`: one split of a data set (a class-folder split, an unlabelled folder or a tfds split), listed and checked."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

UNLABELLED = -1  # label of examples from an unlabelled (prediction) folder


@dataclasses.dataclass
class Source:
    """What the trainer needs to know before the first step: size, classes, skipped files, identity.

    Folder sources hold the file list (`paths`, `labels`); tfds sources hold `tfds` (how to read
    the split) and stream their records. `failed` grows while batches are produced: files that
    passed the structural checks yet could not be decoded, masked out of their batch.
    """

    name: str  # shown to users: "data/dogscats/train", "tfds:cats_vs_dogs:train[:90%]"
    class_names: list[str]  # label i is class_names[i]; empty for unlabelled sources
    num_examples: int  # usable examples (skipped files excluded)
    skipped: list[tuple[str, str]]  # (path, reason) found before training: never decoded
    fingerprint: str  # stable hash of what was listed: keys the feature cache, recorded in run.json
    paths: list[str] | None = None  # folder sources: absolute paths, in eval order
    labels: np.ndarray | None = None  # int32 [num_examples]; UNLABELLED for prediction folders
    tfds: Any = None  # data_tfds.TfdsSplit for tfds sources
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    _ids: list[str] | None = None

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    @property
    def ids(self) -> list[str]:
        """Example ids in eval order (file path relative to the split folder, without extension; tfds file names)."""
        if self._ids is None:  # tfds: one pass over the records (no image decoding), only when asked for
            from vgg_jax import data_tfds

            self._ids = data_tfds.read_ids(self.tfds)
        return self._ids

    def describe(self, max_listed: int = 3) -> str:
        """One line for the report at the start of training: size, classes, skipped files."""
        parts = [f"{self.name}: {self.num_examples:,} images"]
        if self.class_names and self.labels is not None:
            counts = np.bincount(self.labels, minlength=len(self.class_names))
            parts.append(
                f"{len(self.class_names)} classes ("
                + ", ".join(f"{c} {n:,}" for c, n in zip(self.class_names, counts))
                + ")"
            )
        elif self.class_names:
            parts.append(f"{len(self.class_names)} classes ({', '.join(self.class_names)})")
        else:
            parts.append("unlabelled")
        line = ", ".join(parts) + ", " + _skipped_phrase(self.skipped, max_listed)
        if self.failed:  # known only once batches have been read: the end-of-run report shows them
            line += f", {len(self.failed)} failed to decode: " + "; ".join(
                f"{p} ({why})" for p, why in self.failed[:max_listed]
            )
        return line

    def report_failed(self, path: str, reason: str) -> None:
        """Record a file that failed to decode during iteration (once, however many epochs see it)."""
        if all(p != path for p, _ in self.failed):
            self.failed.append((path, reason))


def _skipped_phrase(skipped: list[tuple[str, str]], max_listed: int) -> str:
    if not skipped:
        return "0 skipped"
    listed = "; ".join(f"{p} ({why})" for p, why in skipped[:max_listed])
    more = f"; +{len(skipped) - max_listed} more" if len(skipped) > max_listed else ""
    return f"{len(skipped):,} skipped: {listed}{more}"


def fingerprint(*parts: Any) -> str:
    """Hex digest of the repr of `parts` (lists of names, sizes, mtimes, split settings)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
