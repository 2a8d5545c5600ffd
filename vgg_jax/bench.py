"""`vgg-jax bench`: placeholder wiring; the benchmark helper replaces this module."""

from __future__ import annotations

import argparse

from vgg_jax.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", default="8,32")


def run(args: argparse.Namespace) -> int:
    raise UserError("vgg-jax bench is not built yet")
