"""`Source`: one split of a data set (a class-folder split, an unlabelled folder or a tfds split), listed and checked."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import numpy as np

UNLABELLED = -1  # label of examples from an unlabelled (prediction) folder


@dataclasses.dataclass
class Source:
    """What the trainer needs to know before the first step: size, classes, skipped files, identity.

    Folder sources hold the file list (`paths`, `labels`); tfds sources hold `tfds` (how to read
    the split) and stream their records. `failed` grows while batches are produced: files that
    passed the structural checks yet could not be decoded, masked out of their batch. Paths are
    kept as the file system gives them (a non-UTF-8 name holds surrogate escapes); `describe()`
    shows them with `printable`.
    """

    name: str  # shown to users: "data/dogscats/train", "tfds:cats_vs_dogs:train[:90%]"
    class_names: list[str]  # label i is class_names[i]; empty for unlabelled sources
    num_examples: int  # usable examples (skipped files excluded)
    skipped: list[tuple[str, str]]  # (path, reason) found before training: never decoded
    fingerprint: str  # stable hash of what was listed: keys the feature cache, recorded in run.json
    paths: list[str] | None = None  # folder sources: absolute paths, in eval order
    labels: np.ndarray | None = None  # int32 [num_examples]; UNLABELLED for prediction folders
    tfds: Any = None  # data.tfds.TfdsSplit for tfds sources: has read_ids()
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    folder: str | None = None  # folder sources: the split folder the paths lie under
    notes: list[str] = dataclasses.field(default_factory=list)  # further facts for describe(), a phrase each
    _ids: list[str] | None = None
    _path_ids: dict[str, str] | None = None  # folder sources: the id of every listed image file, kept or skipped

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    @property
    def ids(self) -> list[str]:
        """Example ids in eval order: path under the split folder, without extension unless that clashes; tfds names."""
        if self._ids is None:  # tfds: one pass over the records (no image decoding), only when asked for
            self._ids = self.tfds.read_ids()
        return self._ids

    def id_of(self, path: str) -> str | None:
        """Id of a listed image file (kept, skipped or failed); None for a skipped folder or link; tfds: the name."""
        if self._path_ids is None:
            return path
        return self._path_ids.get(path)

    @property
    def unreadable_ids(self) -> list[str]:
        """Ids of the image files skipped before the run or failed during it: the rows a prediction must still write."""
        return [i for p, _ in self.skipped + self.failed if (i := self.id_of(p)) is not None]

    def describe(self, max_listed: int = 3) -> str:
        """One line for the report at the start of training: size, classes, skipped files, notes."""
        parts = [f"{printable(self.name)}: {self.num_examples:,} images"]
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
        line = ", ".join(parts + [_skipped_phrase(self.skipped, max_listed)] + self.notes)
        if self.failed:  # known only once batches have been read: the end-of-run report shows them
            line += f", {len(self.failed)} failed to decode: " + "; ".join(
                f"{printable(p)} ({why})" for p, why in self.failed[:max_listed]
            )
        return line

    def report_failed(self, path: str, reason: str) -> None:
        """Record a file that failed to decode during iteration (once, however many epochs see it)."""
        if all(p != path for p, _ in self.failed):
            self.failed.append((path, reason))


def _skipped_phrase(skipped: list[tuple[str, str]], max_listed: int) -> str:
    if not skipped:
        return "0 skipped"
    listed = "; ".join(f"{printable(p)} ({why})" for p, why in skipped[:max_listed])
    more = f"; +{len(skipped) - max_listed} more" if len(skipped) > max_listed else ""
    return f"{len(skipped):,} skipped: {listed}{more}"


def printable(text: str) -> str:
    """`text` safe to print on any terminal: bytes of a non-UTF-8 file name (surrogate escapes) shown as \\xff."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are not file-system escapes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(text: str) -> bool:
    """True if `text` (a path from the file system) was valid UTF-8 on disk: no surrogate escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fingerprint(*parts: Any) -> str:
    """Hex digest of the repr of `parts` (lists of names, sizes, mtimes, split settings)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
