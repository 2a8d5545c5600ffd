"""Before a conversion reads its source: temp files of killed runs removed, room for the output checked.
(The output itself is written by params_io.save, through fileio.atomic_path.)"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path

from vgg_jax.errors import UserError
from vgg_jax.fileio import clean_stale_temps

HEADER_ROOM = 1 << 16  # safetensors header of a VGG19: about 3 KB


def clean_leftovers(out: Path, *folders: Path) -> None:
    """Removes temp files of our naming left by a killed convert or download (their writer's pid is gone)."""
    for folder in (out.parent, *folders):
        clean_stale_temps(folder)


def check_space(out: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """UserError when the folder of `out` has no room for float32 params of these shapes (before any reading)."""
    need = 4 * sum(math.prod(s) for s in shapes.values()) + HEADER_ROOM
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # check_writable has already spoken for this folder; the write reports any other failure
    if free < need:
        raise UserError(
            f"{out}: not enough space ({free / 1e6:.1f} MB free in {folder}, the params file needs {need / 1e6:.1f} MB)"
        )
