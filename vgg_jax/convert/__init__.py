"""Keras VGG weight files (every Keras generation) -> canonical Flax params files.

`convert_file(src, out)` detects the format, maps layers, undoes Theano conventions, writes
safetensors atomically and returns a report. numpy + h5py + safetensors only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from vgg_jax.convert import download, mapping
from vgg_jax.convert import head as finetuned_top
from vgg_jax.convert.archive import extract_dir
from vgg_jax.convert.conventions import Convention
from vgg_jax.convert.head import FineTuned
from vgg_jax.convert.output import check_space, clean_leftovers
from vgg_jax.convert.source import Source, open_source
from vgg_jax.errors import UserError
from vgg_jax.fileio import check_writable
from vgg_jax.models import arch, params_io
from vgg_jax.paths import file_digest

__all__ = ["Report", "TopOptions", "convert_file", "load_keras", "sha256"]

LABELS = {
    "tf": "TensorFlow convention (correlation)",
    "theano": "Theano convention (true convolution: kernels stored flipped)",
    "hwc": "(h,w,c) order",
    "chw": "(c,h,w) order",
}
INPUT_NOTE = f"{finetuned_top.RESIZE_NOTE}, caffe preprocessing"
OTHER = {"tf": "theano", "theano": "tf", "hwc": "chw", "chw": "hwc"}


@dataclass(frozen=True)
class TopOptions:
    """What a fine-tuned Keras model may not record: class names, input size, global pooling kind."""

    classes: list[str] | None = None  # default class_0, class_1, ...
    image_size: int | None = None  # default: the model config's Input shape, else fc1's rows, else 224
    pooling: str | None = None  # "avg" / "max", for a file without a model config


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
    params: int = 0  # parameter count of the output
    image_size: int = arch.IMAGE_SIZE
    finetuned: FineTuned | None = None  # a fine-tuned model's top, class names set (see convert.head)
    classes_line: str = ""  # where the class names come from

    @property
    def metadata(self) -> dict:
        """What the params file records: the conversion, and for a fine-tuned model what `vgg-jax export` records
        (vgg_jax.inference.predictor.REQUIRED_FIELDS), so vgg_jax.load and VGG16(weights=...) rebuild its Classifier."""
        meta = self._conversion()
        fine = self.finetuned
        if fine is None:
            return {**meta, "image_size": self.image_size} if self.include_top else meta
        meta.update(
            classes=fine.class_names, head_units=fine.head_units, image_size=fine.image_size, resize="squash",
            interpolation="nearest", top=fine.top, dtype="float32", preprocessing="caffe",
            exported_from=Path(self.source).name, image_size_from=fine.image_size_from, notes=fine.notes,
        )  # fmt: skip
        if fine.fc_units not in (None, arch.FC_UNITS):
            meta["fc_units"] = fine.fc_units
        return meta

    def _conversion(self) -> dict:
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
        """The conventions that were guessed from the layout, with the setting that overrides each."""
        pairs = [("kernels", self.kernels)] + ([("fc1_order", self.fc1)] if self.fc1 else [])
        return [(name, c) for name, c in pairs if c.source == "inferred"]

    def __str__(self) -> str:
        lines = [f"source        {self.source}", f"sha256        {self.source_sha256}"]
        if self.official:
            lines.append(
                f"release       official Keras release file ({self.official}), md5 matches keras.applications'"
            )
        lines += [
            f"format        {self.format}",
            f"architecture  {self.architecture.upper()}, {self._top()}, {self.params:,} params",
            f"layers        {self._mapped()}",
            *self._finetuned_lines(),
            f"kernels       {LABELS[self.kernels.value]} [{self.kernels.source}] {self.kernels.reason}",
        ]
        if self.fc1:
            lines.append(f"fc1 rows      {LABELS[self.fc1.value]} [{self.fc1.source}] {self.fc1.reason}")
        lines.append(f"transforms    {'; '.join(self.transforms) or 'none (already canonical)'}")
        if self.inferred:
            what = " and ".join("kernel convention" if f == "kernels" else "fc1 row order" for f, _ in self.inferred)
            tries = " or ".join(f"`{name}={OTHER[c.value]}`" for name, c in self.inferred)
            lines.append(
                f"warning       {what} inferred, not recorded in the file: if {self._sanity_check()} gives nonsense, "
                f"try {tries}"
            )
        if self.output:
            lines.append(f"wrote         {self.output} ({self.output_bytes / 1e6:.1f} MB)")
            if self.finetuned:
                lines.append(
                    f"use           vgg_jax.load({self.output!r}).predict(images); "
                    f"vgg-jax train --weights {self.output} continues training"
                )
        return "\n".join(lines)

    def _sanity_check(self) -> str:
        return "`vgg-jax classify`" if self.finetuned is None else "vgg_jax.load(...).predict on known images"

    def _top(self) -> str:
        fine = self.finetuned
        if fine is None:
            return f"with top, {self.classes} classes" if self.include_top else "no top (conv layers only)"
        return f"fine-tuned: top {fine.top} + a {fine.head_activation} head, {fine.num_classes} classes"

    def _head_units(self) -> str:
        units = self.finetuned.head_units
        return f"{units} {self.finetuned.head_activation} unit{'s' if units > 1 else ''}"

    def _finetuned_lines(self) -> list[str]:
        fine = self.finetuned
        if fine is None:
            return []
        source = fine.head.activation or "not recorded"
        return [
            f"head          {fine.head.name}: Dense({fine.head.units}, {source}) -> head: {self._head_units()}",
            f"classes       {self.classes_line}",
            f"input         {fine.image_size}x{fine.image_size} images [{fine.image_size_from}], {INPUT_NOTE}",
            *(f"note          {n}" for n in fine.notes),
        ]

    def _mapped(self) -> str:
        convs = [(s, c) for s, c in self.layers if c.startswith("block")]
        mapped = f"{len(convs)} conv + {len(self.layers) - len(convs)} dense"
        vgg = self.layers if self.finetuned is None else convs
        renamed = [f"{s} -> {c}" for s, c in vgg if s.split("/")[-1] != c]
        if renamed:
            mapped += f" (by order, shapes checked: {renamed[0]}, ..., {renamed[-1]})"
        else:
            mapped += f" (by Keras layer name, from {self.names_from})"
        if self.finetuned:
            mapped += "; top " + ", ".join(f"{s.split('/')[-1]} -> {c}" for s, c in self.layers[len(convs) :])
        return mapped


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file: the key of converted files in the cache."""
    return file_digest(path, "sha256")


@contextmanager
def _planned(
    src: str | os.PathLike, choices: mapping.Choices, classes: list[str] | None = None
) -> Iterator[tuple[Source, mapping.Plan, Report]]:
    """Opens `src`, recognises an official file, decides the plan and its report; nothing read but the hash.
    `classes`: a fine-tuned model's class names, where the file does not record them."""
    with open_source(src) as source:
        # The official files are Keras 1 save_weights files (keras.applications' releases): only those can match an md5.
        sha, md5 = download.digests(src, with_md5=source.format == "keras1")
        release = download.official_release(md5)
        official = release.filename if release else None
        p = mapping.plan(source, replace(choices, official=official))
        classes_line = ""
        if p.finetuned:
            p.finetuned.class_names, classes_line = finetuned_top.class_names(source.path, classes, p.classes)
        elif classes is not None:
            raise UserError(
                f"{src}: `classes` names the classes of a fine-tuned model's head; this file is a VGG "
                + ("with its ImageNet-style top" if p.include_top else "without a top")
            )
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
            params=arch.param_count(p.shapes),
            image_size=p.image_size,
            finetuned=p.finetuned,
            classes_line=classes_line,
        )
        yield source, p, report


def load_keras(
    src: str | os.PathLike,
    arch_name: str | None = None,
    include_top: bool | None = None,
    kernels: str | None = None,
    fc1_order: str | None = None,
) -> tuple[dict, Report]:
    """Reads a Keras VGG weights file into canonical nested numpy params and a Report.

    The params are a VGG's (ImageNet-style top or none): a fine-tuned model is refused in one line that points
    to `vgg-jax vgg_jax.convert` and vgg_jax.load, which serve it."""
    with _planned(src, mapping.Choices(arch_name, include_top, kernels, fc1_order)) as (source, p, report):
        if p.finetuned:
            fine = p.finetuned
            raise UserError(
                f"{src}: a fine-tuned Keras model ({p.arch.upper()}, top {fine.top}, a {fine.head_activation} head "
                f"for {fine.num_classes} classes), not ImageNet VGG weights; convert it with `vgg-jax convert {src} "
                "-o model.safetensors` and use vgg_jax.load('model.safetensors').predict(images)"
            )
        flat = dict(mapping.arrays(source, p))
    return params_io.unflatten(flat), report


def convert_file(
    src: str | os.PathLike,
    out: str | os.PathLike,
    arch_name: str | None = None,
    include_top: bool | None = None,
    kernels: str | None = None,
    fc1_order: str | None = None,
    top: TopOptions | None = None,
) -> Report:
    """Converts `src` to the params file `out` (written atomically: no partial file on failure).

    The output folder is checked (writable, room for the params) before the source's arrays are read, and
    temp files left there, in the download cache and the extraction folder by a killed run are removed.
    A fine-tuned model (a VGG, then a new top and Dense head) becomes a file `vgg_jax.load` serves; `top` gives
    its class names, image size or pooling where the Keras file does not record them.
    """
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise UserError(f"{out}: output would overwrite the source file")
    clean_leftovers(out, download.folder(), extract_dir())
    check_writable(out, "params file")
    top = top or TopOptions()
    choices = mapping.Choices(
        arch_name, include_top, kernels, fc1_order, image_size=top.image_size, pooling=top.pooling
    )
    with _planned(src, choices, top.classes) as (source, p, report):
        check_space(out, p.shapes)
        flat = dict(mapping.arrays(source, p))
    params_io.save(out, params_io.unflatten(flat), report.metadata)
    report.output, report.output_bytes = str(out), os.path.getsize(out)
    return report
