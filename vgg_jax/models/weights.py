"""Pretrained weights for a network: where they are (a file, or the official ImageNet params fetched once) and
how they are read into it (`load_backbone`: only the layers the network asks for, architecture and shapes checked).

The Keras-shaped factories (`vgg_jax.VGG16`) and the command lines word the same refusals in their own terms:
`ARGUMENTS` names the factories' keyword arguments, `SETTINGS` the train settings (`weights=random`), which a command line words as its flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from vgg_jax.errors import UserError
from vgg_jax.models import params_io
from vgg_jax.paths import file_digest, imagenet_params_path

IMAGENET_ARCHS = ("vgg16", "vgg19")  # the architectures Keras publishes ImageNet weights for


@dataclass(frozen=True)
class Wording:
    """How refusals name the caller's choices: `imagenet` the ImageNet request, then what to do instead of
    ImageNet weights for another architecture, instead of a failed download, and the words for a file holding
    another architecture ({arch} is the one asked for) and for a no-top file where fc1/fc2 are needed."""

    imagenet: str
    no_imagenet_hint: str | None = None
    download_hint: str | None = None
    other_arch: str = "not {arch}"
    no_top_hint: str = params_io.NO_TOP_HINT


ARGUMENTS = Wording(imagenet="weights='imagenet'")
SETTINGS = Wording(
    imagenet="`weights=imagenet`",
    no_imagenet_hint="pass `weights=random` or a params file",
    download_hint="or train a random backbone with `weights=random`",
    other_arch="but `arch` is {arch}",
    no_top_hint="`top=fc` needs fc1/fc2: use the full file or `top=avg`",
)


@dataclass(frozen=True)
class Weights:
    """A run's weights file, as resolved once: its path and sha256 (None for a random backbone)."""

    path: str | None  # None = random backbone
    sha256: str | None
    random: bool = False  # a params file whose metadata says its weights are random (the demo's)

    @property
    def label(self) -> str:
        """The weights as a run's log and report name them."""
        if not self.path:
            return "RANDOM backbone (no weights file)"
        return f"{self.path} ({'RANDOM weights, ' if self.random else ''}sha256 {self.sha256[:12]})"


def resolve_weights(spec: str | None, arch_name: str = "vgg16", include_top: bool = True) -> Weights:
    """A params file path (or "imagenet": downloaded and converted once, the no-top file without `include_top`; or
    None/"random") -> Weights with the file's sha256 and whether its metadata marks it random."""
    if spec in (None, "", "random"):
        return Weights(None, None)
    path = imagenet_path(arch_name, include_top, SETTINGS) if spec == "imagenet" else Path(spec)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file; convert Keras files with `vgg-jax convert`")
    random = params_io.read_metadata(path).get("weights") == "random"
    return Weights(str(path), file_digest(path), random)


def imagenet_path(arch_name: str, include_top: bool, wording: Wording = ARGUMENTS) -> Path:
    """The official ImageNet params for `arch_name`, downloaded, md5-checked and converted on first use, as Keras
    does; a full file already cached serves include_top=False too."""
    from vgg_jax.convert.download import imagenet_params

    if arch_name not in IMAGENET_ARCHS:
        raise UserError(
            f"{wording.imagenet}: Keras publishes ImageNet weights for vgg16 and vgg19 only, not {arch_name}"
            + (f"; {wording.no_imagenet_hint}" if wording.no_imagenet_hint else "")
        )
    if not include_top and (full := imagenet_params_path(arch_name)).is_file():
        return full
    try:
        return imagenet_params(arch_name if include_top else f"{arch_name}-notop")
    except UserError as e:
        if wording.download_hint is None:
            raise
        raise UserError(f"{e}; {wording.download_hint}") from None


def load_backbone(
    path: str | os.PathLike, like: dict[str, Any], arch_name: str, wording: Wording = ARGUMENTS
) -> dict[str, jax.Array]:
    """The params `like` names (a tree of arrays or ShapeDtypeStructs) read from the params file at `path` as jax
    arrays; UserError when the file holds another architecture than `arch_name`, lacks a layer or misfits one."""
    params, _ = params_io.load_checked(
        path,
        like,
        arch_name,
        wanted=wording.other_arch.format(arch=arch_name),
        no_top_hint=wording.no_top_hint,
    )
    return jax.tree.map(jnp.asarray, params)
