"""The library's voice: `say` prints plain lines on stdout from process 0 only, and the logger can silence it."""

from __future__ import annotations

import logging

from vgg_jax import log


def test_say_prints_on_the_first_process_only(capsys):
    try:
        log.say("from process 0")
        log.set_process_index(1)
        log.say("from process 1")
    finally:
        log.set_process_index(0)
    assert capsys.readouterr().out == "from process 0\n"


def test_the_logger_level_silences_it(capsys):
    log.LOGGER.setLevel(logging.WARNING)
    try:
        log.say("hidden")
    finally:
        log.LOGGER.setLevel(logging.INFO)
    log.say("shown")
    assert capsys.readouterr().out == "shown\n"
