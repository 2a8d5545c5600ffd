"""Keras VGG weight files (every Keras generation) -> canonical Flax params files.

`convert_file(src, out)` detects the format, maps layers, undoes Theano conventions, writes
safetensors atomically and returns a report. numpy + h5py + safetensors only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from convert import download, mapping
from convert.archive import extract_dir
from convert.conventions import Convention
from convert.output import check_space, clean_leftovers
from convert.source import Source, open_source
from vgg_jax import arch, params_io
from vgg_jax.errors import UserError
from vgg_jax.fileio import check_writable
from vgg_jax.paths import file_digest

__all__ = ["Report", "convert_file", "load_keras", "sha256"]

LABELS = {
    "tf": "TensorFlow convention (correlation)",
    "theano": "Theano convention (true convolution: kernels stored flipped)",
    "hwc": "(h,w,c) order",
    "chw": "(c,h,w) order",
}
OTHER = {"tf": "theano", "theano": "tf", "hwc": "chw", "chw": "hwc"}


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
    names_from: str  # where the source's layer names came from (see Source.names_from)
    transforms: list[str]
    kernels: Convention
    fc1: Convention | None  # None without a top
    official: str | None = None  # the official Keras release file this source is (by md5)
    output: str | None = None
    output_bytes: int | None = None

    @property
    def metadata(self) -> dict:
        return {
            "source_file": Path(self.source).name,
            "source_format": self.format,
            "source_sha256": self.source_sha256,
            "official_release": self.official,
            "architecture": self.architecture,
            "include_top": self.include_top,
            "classes": self.classes,
            "layer_names_from": self.names_from,
            "kernels": self.kernels.value,
            "kernels_source": self.kernels.source,
            "fc1_order": self.fc1.value if self.fc1 else None,
            "fc1_order_source": self.fc1.source if self.fc1 else None,
            "transforms": self.transforms,
        }

    @property
    def inferred(self) -> list[tuple[str, Convention]]:
        """The conventions that were guessed from the layout, with the option that overrides each."""
        pairs = [("--kernels", self.kernels)] + ([("--fc1-order", self.fc1)] if self.fc1 else [])
        return [(flag, c) for flag, c in pairs if c.source == "inferred"]

    def __str__(self) -> str:
        shapes = arch.param_shapes(arch.DEPTHS[self.architecture], include_top=self.include_top, classes=self.classes)
        lines = [f"source        {self.source}", f"sha256        {self.source_sha256}"]
        if self.official:
            lines.append(
                f"release       official Keras release file ({self.official}), md5 matches keras.applications'"
            )
        lines += [
            f"format        {self.format}",
            f"architecture  {self.architecture.upper()}, "
            + (f"with top, {self.classes} classes" if self.include_top else "no top (conv layers only)")
            + f", {arch.param_count(shapes):,} params",
            f"layers        {self._mapped()}",
            f"kernels       {LABELS[self.kernels.value]} [{self.kernels.source}] {self.kernels.reason}",
        ]
        if self.fc1:
            lines.append(f"fc1 rows      {LABELS[self.fc1.value]} [{self.fc1.source}] {self.fc1.reason}")
        lines.append(f"transforms    {'; '.join(self.transforms) or 'none (already canonical)'}")
        if self.inferred:
            what = " and ".join("kernel convention" if f == "--kernels" else "fc1 row order" for f, _ in self.inferred)
            tries = " or ".join(f"{flag} {OTHER[c.value]}" for flag, c in self.inferred)
            lines.append(
                f"warning       {what} inferred, not recorded in the file: if `vgg-jax classify` gives nonsense, try {tries}"
            )
        if self.output:
            lines.append(f"wrote         {self.output} ({self.output_bytes / 1e6:.1f} MB)")
        return "\n".join(lines)

    def _mapped(self) -> str:
        convs = sum(1 for _, c in self.layers if c.startswith("block"))
        renamed = [f"{s} -> {c}" for s, c in self.layers if s.split("/")[-1] != c]
        mapped = f"{convs} conv + {len(self.layers) - convs} dense"
        if renamed:
            return mapped + f" (by order, shapes checked: {renamed[0]}, ..., {renamed[-1]})"
        return mapped + f" (by Keras layer name, from {self.names_from})"


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file: the key of converted files in the cache."""
    return file_digest(path, "sha256")


@contextmanager
def _planned(
    src: str | os.PathLike,
    arch_name: str | None,
    include_top: bool | None,
    kernels: str | None,
    fc1_order: str | None,
) -> Iterator[tuple[Source, mapping.Plan, Report]]:
    """Opens `src`, recognises an official file, decides the plan and its report; nothing read but the hash."""
    with open_source(src) as source:
        # The official files are Keras 1 save_weights files (REFERENCE.md 1b): only those can match an md5.
        sha, md5 = download.digests(src, with_md5=source.format == "keras1")
        release = download.official_release(md5)
        official = release.filename if release else None
        p = mapping.plan(source, arch_name, include_top, kernels, fc1_order, official)
        report = Report(
            source=str(src),
            source_sha256=sha,
            format=source.description,
            architecture=p.arch,
            include_top=p.include_top,
            classes=p.classes,
            layers=[(layer.name, name) for name, layer in p.mapping],
            names_from=source.names_from,
            transforms=p.transforms,
            kernels=p.kernels,
            fc1=p.fc1,
            official=official,
        )
        yield source, p, report


def load_keras(
    src: str | os.PathLike,
    arch_name: str | None = None,
    include_top: bool | None = None,
    kernels: str | None = None,
    fc1_order: str | None = None,
) -> tuple[dict, Report]:
    """Reads a Keras VGG weights file into canonical nested numpy params and a Report."""
    with _planned(src, arch_name, include_top, kernels, fc1_order) as (source, p, report):
        flat = dict(mapping.arrays(source, p))
    return params_io.unflatten(flat), report


def convert_file(
    src: str | os.PathLike,
    out: str | os.PathLike,
    arch_name: str | None = None,
    include_top: bool | None = None,
    kernels: str | None = None,
    fc1_order: str | None = None,
) -> Report:
    """Converts `src` to the params file `out` (written atomically: no partial file on failure).

    The output folder is checked (writable, room for the params) before the source's arrays are read, and
    temp files left there, in the download cache and the extraction folder by a killed run are removed.
    """
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise UserError(f"{out}: output would overwrite the source file")
    clean_leftovers(out, download.folder(), extract_dir())
    check_writable(out, "params file")
    with _planned(src, arch_name, include_top, kernels, fc1_order) as (source, p, report):
        check_space(out, p.shapes)
        flat = dict(mapping.arrays(source, p))
    params_io.save(out, params_io.unflatten(flat), report.metadata)
    report.output, report.output_bytes = str(out), os.path.getsize(out)
    return report
