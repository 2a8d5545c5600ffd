"""One example -> {"image": uint8 [S, S, 3], "label", "mask"}: vgg_jax.data.resize's decode + resize, then seeded augmentation.

`Loader` runs inside grain's threads and worker processes, so it is a picklable dataclass of plain
data and it never raises for a bad file: a file that fails to decode comes back masked (mask False,
zero image), and the main process names it (`decode_error`). No tensorflow, no jax.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from vgg_jax.data import resize as resizing

AUGMENT_ZOOM = 256 / 224  # augmentation resizes to 256 for a 224 crop, the classic ImageNet recipe
PADDING = -1  # a plan entry that is no example: the masked slots that fill the last eval batch


@dataclasses.dataclass(frozen=True)
class Loader:
    """Plan entry (an example index, or PADDING) -> one element; `items[i]` is example i's path or encoded bytes."""

    items: Sequence
    labels: np.ndarray
    size: int
    resize: str
    interpolation: str
    augment_key: int | None = None  # training: crops and flips drawn from (augment_key, example index)

    def __call__(self, index: int) -> dict:
        index = int(index)
        if index == PADDING:
            return self._blank()
        return self.element(index, self.items[index], self.labels[index])

    def element(self, index: int, item: bytes | str, label: int) -> dict:
        """Example `index` from its path or bytes and its label; a file that fails to decode gives a masked blank."""
        try:
            image = self.image(item, index)
        except resizing.DecodeError:
            return self._blank()
        return {"image": image, "label": np.int32(label), "mask": np.True_}

    def image(self, item: bytes | str, index: int) -> np.ndarray:
        """The decoded, resized (and, for training, augmented) image of example `index`."""
        if self.augment_key is None:
            return resizing.decode_resize(item, self.size, self.resize, self.interpolation)
        big = resizing.decode_resize(item, round(self.size * AUGMENT_ZOOM), self.resize, self.interpolation)
        return augment(big, self.size, self.augment_key, index)

    def _blank(self) -> dict:
        return {"image": np.zeros((self.size, self.size, 3), np.uint8), "label": np.int32(0), "mask": np.False_}


def augment(image: np.ndarray, size: int, key: int, index: int) -> np.ndarray:
    """A size x size crop at a random offset, flipped left-right half the time: a pure function of (key, index)."""
    rng = np.random.default_rng([key, index])
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    crop = image[top : top + size, left : left + size]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def decode_error(item: bytes | str) -> str:
    """Why an example failed in the pipeline, in one line: the decoder's reason, found by decoding it again."""
    try:
        resizing.decode(item)
    except resizing.DecodeError as e:
        return f"failed to decode: {e.reason}"
    return "failed to decode in the pipeline, decodes alone"


def default_threads() -> int:
    """Cores this process may run on (the affinity mask, which containers and `taskset` set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
