"""The library's one voice: `say` logs to the "vgg_jax" logger, which prints plain lines on stdout from the
first process of a job only (a multi-host run speaks once). Silence it with
`logging.getLogger("vgg_jax").setLevel(logging.WARNING)`."""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("vgg_jax")


class _Stdout(logging.StreamHandler):
    """A handler on whatever sys.stdout is when a record is written (a redirect, pytest's capture)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


class _FirstProcessOnly(logging.Filter):
    """Passes records on process 0 only; the trainer says which process this is (`set_process_index`)."""

    process_index = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return self.process_index == 0


_FILTER = _FirstProcessOnly()


def _install() -> None:
    if not any(isinstance(h, _Stdout) for h in LOGGER.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_FILTER)
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False


def set_process_index(index: int) -> None:
    """Which process of a multi-host job this is: only process 0 prints."""
    _FILTER.process_index = index


def say(message: str) -> None:
    """One progress or status line for the user (INFO on the "vgg_jax" logger)."""
    LOGGER.info(message)


_install()
