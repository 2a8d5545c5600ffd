"""Where vgg-jax keeps downloads and converted ImageNet params, and how it orders names (pure Python: the converter
uses it too)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def cache_dir() -> Path:
    """$VGG_JAX_CACHE, else $XDG_CACHE_HOME/vgg-jax, else ~/.cache/vgg-jax."""
    if env := os.environ.get("VGG_JAX_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vgg-jax"


def imagenet_params_path(name: str) -> Path:
    """The params file `vgg-jax convert --download NAME` writes, e.g. vgg16-notop -> .../vgg16-notop.safetensors."""
    return cache_dir() / f"{name}.safetensors"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks (weights files are hundreds of MB)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def natural_key(text: str) -> list:
    """Sort key with digit runs as numbers: 'conv2d_10' after 'conv2d_2', 'test1/10.jpg' after 'test1/2.jpg'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
