"""Fault injection for the crash tests: `VGG_JAX_FAULT=<point>[@<n>]` SIGKILLs this process the n-th time
(default 1st) the code reaches the named point, e.g. `checkpoint-after-state@3`. Off unless the variable is set."""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def maybe_kill(point: str) -> None:
    """Dies here, as a power cut or `kill -9` would, if $VGG_JAX_FAULT names this point (and its count is reached)."""
    spec = os.environ.get("VGG_JAX_FAULT")
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_pause(point: str, timeout: float = 600.0) -> None:
    """Waits at the named point until a file exists, if $VGG_JAX_PAUSE is "<point>:<file>": lets a test hold a
    process at a known place (say, holding the run lock) instead of hoping a sleep lands there."""
    import time

    spec = os.environ.get("VGG_JAX_PAUSE", "")
    name, _, release = spec.partition(":")
    if name != point or not release:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
