"""Keras VGG weight files (every Keras generation) -> canonical Flax params files.

`convert_file(src, out)` detects the format, maps layers, undoes Theano conventions, writes
safetensors atomically and returns a report. numpy + h5py + safetensors only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from convert import mapping
from convert.source import open_source
from vgg_jax import arch, params_io
from vgg_jax.errors import UserError
from vgg_jax.paths import file_digest

__all__ = ["Report", "convert_file", "load_keras", "sha256"]


@dataclass
class Report:
    """What a conversion found and did; `str(report)` is the short report the CLI prints."""

    source: str
    source_sha256: str
    format: str
    architecture: str
    include_top: bool
    classes: int
    layers: list[tuple[str, str]]  # (source layer, canonical layer)
    transforms: list[str]
    kernels: str
    kernels_reason: str
    output: str | None = None
    output_bytes: int | None = None

    @property
    def metadata(self) -> dict:
        return {
            "source_file": Path(self.source).name,
            "source_format": self.format,
            "source_sha256": self.source_sha256,
            "architecture": self.architecture,
            "include_top": self.include_top,
            "classes": self.classes,
            "kernels": self.kernels,
            "transforms": self.transforms,
        }

    def __str__(self) -> str:
        shapes = arch.param_shapes(arch.DEPTHS[self.architecture], include_top=self.include_top, classes=self.classes)
        convs = sum(1 for _, c in self.layers if c.startswith("block"))
        renamed = [f"{s} -> {c}" for s, c in self.layers if s.split("/")[-1] != c]
        mapped = f"{convs} conv + {len(self.layers) - convs} dense"
        if renamed:
            mapped += f" (by order: {renamed[0]}, ..., {renamed[-1]})"
        else:
            mapped += " (by Keras layer name)"
        lines = [
            f"source        {self.source}",
            f"sha256        {self.source_sha256}",
            f"format        {self.format}",
            f"architecture  {self.architecture.upper()}, "
            + (f"with top, {self.classes} classes" if self.include_top else "no top (conv layers only)")
            + f", {arch.param_count(shapes):,} params",
            f"layers        {mapped}",
            f"kernels       {'Theano convention' if self.kernels == 'theano' else 'TensorFlow convention'}: {self.kernels_reason}"
            + (
                ""
                if "override" in self.kernels_reason
                else f" (if `vgg-jax classify` gives nonsense, try --kernels {'tf' if self.kernels == 'theano' else 'theano'})"
            ),
            f"transforms    {'; '.join(self.transforms) or 'none (already canonical)'}",
        ]
        if self.output:
            lines.append(f"wrote         {self.output} ({self.output_bytes / 1e6:.1f} MB)")
        return "\n".join(lines)


def sha256(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def load_keras(
    src: str | os.PathLike,
    arch_name: str | None = None,
    include_top: bool | None = None,
    kernels: str | None = None,
) -> tuple[dict, Report]:
    """Reads a Keras VGG weights file into canonical nested numpy params and a Report."""
    if kernels not in (None, "tf", "theano"):
        raise UserError(f"--kernels must be 'tf' or 'theano'. Received: {kernels!r}")
    with open_source(src) as source:
        p = mapping.plan(source, arch_name, include_top, kernels)
        flat = dict(mapping.arrays(source, p))
        report = Report(
            source=str(src),
            source_sha256=sha256(src),
            format=source.description,
            architecture=p.arch,
            include_top=p.include_top,
            classes=p.classes,
            layers=[(layer.name, name) for name, layer in p.mapping],
            transforms=p.transforms,
            kernels=p.kernels,
            kernels_reason=p.kernels_reason,
        )
    return params_io.unflatten(flat), report


def convert_file(
    src: str | os.PathLike,
    out: str | os.PathLike,
    arch_name: str | None = None,
    include_top: bool | None = None,
    kernels: str | None = None,
) -> Report:
    """Converts `src` to the params file `out` (written atomically: no partial file on failure)."""
    if Path(out).resolve() == Path(src).resolve():
        raise UserError(f"{out}: output would overwrite the source file")
    params, report = load_keras(src, arch_name, include_top, kernels)
    params_io.save(out, params, report.metadata)
    report.output, report.output_bytes = str(out), os.path.getsize(out)
    return report
