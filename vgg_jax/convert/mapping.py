"""Map a Source's layers onto canonical VGG params: pick the architecture, check shapes, undo Theano conventions.

Canonical = Keras layer names, Flax shapes: conv kernels HWIO for correlation, fc1 rows in NHWC
flatten order (h, w, c). See docs/DESIGN.md, "Canonical params" and "Conventions and transforms".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from vgg_jax.convert import conventions
from vgg_jax.convert import head as finetuned_top
from vgg_jax.convert.conventions import Convention
from vgg_jax.convert.guard import check_float
from vgg_jax.convert.head import FineTuned
from vgg_jax.convert.source import Layer, Source
from vgg_jax.errors import UserError
from vgg_jax.models import arch
from vgg_jax.paths import natural_key

CANONICAL_CONV = re.compile(r"block(\d+)_conv(\d+)$")


@dataclass
class Plan:
    """What the converter will do: which source layer becomes which canonical layer, and how."""

    arch: str
    include_top: bool
    classes: int
    layout: str  # "hwio" (Keras >= 1 tf/channels_last) or "oihw" (Theano dim ordering)
    kernels: Convention  # "tf" (correlation) or "theano" (true convolution: kernels stored flipped)
    fc1: Convention | None  # fc1 row order, "hwc" (channels_last flatten) or "chw" (channels-first); None without top
    mapping: list[tuple[str, Layer]]  # (canonical layer name, source layer)
    dropped: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)  # storage dtypes of the mapped weights
    image_size: int = arch.IMAGE_SIZE  # the input size fc1's rows (or the model config) fix
    finetuned: FineTuned | None = None  # a fine-tuned model's new top, mapped onto a vgg-jax Classifier

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        depths = arch.DEPTHS[self.arch]
        if self.finetuned:
            return {**arch.param_shapes(depths, include_top=False), **self.finetuned.shapes()}
        return arch.param_shapes(depths, include_top=self.include_top, classes=self.classes, image_size=self.image_size)

    @property
    def flat_layer(self) -> str | None:
        """The Dense on the Flatten, whose rows follow the fc1 row order: fc1, or an MLP top's mlp1."""
        names = [name for name, _ in self.mapping]
        return next((n for n in ("fc1", "mlp1") if n in names), None)

    @property
    def transforms(self) -> list[str]:
        steps = []
        if self.layout == "oihw":
            steps.append("conv kernels OIHW -> HWIO")
        if self.kernels.value == "theano":
            steps.append("conv kernels rotated 180 degrees (Theano convolution -> correlation)")
        if self.fc1 and self.fc1.value == "chw":
            steps.append(f"{self.flat_layer} rows reordered (c,h,w) -> (h,w,c)")
        if self.finetuned:
            steps += finetuned_top.transforms(self.finetuned)
        for dtype in self.dtypes:
            if dtype in ("float16", "bfloat16"):
                steps.append(f"{dtype} weights widened to float32 (exact)")
            elif dtype == "float64":
                steps.append("float64 weights rounded to float32")
        if self.dropped:
            steps.append(f"dropped top layers {', '.join(self.dropped)}")
        return steps


@dataclass(frozen=True)
class Choices:
    """What the caller decides instead of the file: the architecture, top or no top, the kernel convention
    ("tf"/"theano") and fc1 row order ("hwc"/"chw") where the file records or implies another, the official
    release file name when the source is one (by md5), and a fine-tuned model's image size and pooling."""

    arch: str | None = None
    include_top: bool | None = None
    kernels: str | None = None
    fc1_order: str | None = None
    official: str | None = None
    image_size: int | None = None
    pooling: str | None = None


def plan(source: Source, choices: Choices = Choices()) -> Plan:
    """Decides the mapping for `source`; raises UserError (naming the file) when it is not a usable VGG.

    A fine-tuned model (a VGG, then a new top and Dense head) maps onto a vgg-jax Classifier (see convert.head);
    `choices.image_size` and `choices.pooling` ("avg"/"max") say what its file may not record.
    """
    c = choices
    if c.kernels not in (None, "tf", "theano"):
        raise UserError(f"`kernels` must be 'tf' or 'theano'. Received: {c.kernels!r}")
    if c.fc1_order not in (None, "hwc", "chw"):
        raise UserError(f"`fc1_order` must be 'hwc' or 'chw'. Received: {c.fc1_order!r}")
    path = source.path
    convs = [l for l in source.layers if l.kind == "conv"]
    denses = [l for l in source.layers if l.kind == "dense"]
    tail = finetuned_top.vgg_tail(source.config)
    if tail is not None:
        finetuned_top.check_tail(path, tail)
    _reject_non_vgg(source, convs, denses)
    _reject_model_without_vgg(source, convs, tail)

    layout = _kernel_layout(source, convs)
    conv_names, name = _conv_mapping(source, convs, c.arch)
    denses = _dense_order(source, denses, tail)
    if finetuned_top.is_finetuned(source, denses):
        return _finetuned_plan(source, list(zip(conv_names, convs)), denses, tail, name, layout, c)
    if len(denses) not in (0, 3):
        raise UserError(
            f"{path}: {len(denses)} dense layer(s) ({', '.join(l.name for l in denses)}); "
            "a VGG file has none (no-top) or three (fc1, fc2, predictions)"
        )
    has_top = len(denses) == 3
    if c.include_top and not has_top:
        raise UserError(
            f"{path}: a no-top file (conv layers only), but the top (fc1, fc2, predictions) is needed; use the full weights file"
        )
    keep_top = has_top if c.include_top is None else c.include_top
    mapping = list(zip(conv_names, convs))
    dropped = []
    if has_top:
        by_name = {l.name.split("/")[-1]: l for l in denses}
        if set(by_name) == set(arch.TOP_LAYERS):
            denses = [by_name[n] for n in arch.TOP_LAYERS]
        elif source.format in ("keras3", "keras3-archive"):
            denses = sorted(denses, key=lambda l: natural_key(l.path or l.name))
        if keep_top:
            mapping += list(zip(arch.TOP_LAYERS, denses))
        else:
            dropped = list(arch.TOP_LAYERS)
    classes = denses[-1].shapes[0][1] if keep_top else 1000
    size = arch.IMAGE_SIZE
    if keep_top:
        size, _ = finetuned_top.image_size_of(path, source.config, denses[0], _width(convs, layout), c.image_size)

    conv_kind = conventions.kernel_convention(
        source.format, source.backend, source.keras_version, layout, c.kernels, c.official
    )
    fc1 = conventions.fc1_order(path, source.config, layout, c.fc1_order, c.official) if keep_top else None
    result = Plan(name, keep_top, classes, layout, conv_kind, fc1, mapping, dropped, image_size=size)
    return _checked(source, result)


def _width(convs: list[Layer], layout: str) -> int:
    """Output channels of the last conv layer (block5's 512 in a VGG)."""
    shape = convs[-1].shapes[0]
    return shape[0] if layout == "oihw" else shape[-1]


def _checked(source: Source, p: Plan) -> Plan:
    _check_shapes(source, p)
    p.dtypes = _check_dtypes(p)
    return p


def _dense_order(source: Source, denses: list[Layer], tail: list[tuple[str, dict]] | None) -> list[Layer]:
    """Dense layers in network order: the model config's where it names them all (a Keras 3 file's groups sort
    by class and path, so a nested VGG's fc1 would sort after the new head), else the file's (Keras 3: by path)."""
    by_name = {l.name.split("/")[-1]: l for l in denses}
    listed = [str(cfg.get("name")) for cls, cfg in (tail or []) if cls == "Dense"]
    if denses and len(by_name) == len(denses) and sorted(listed) == sorted(by_name):
        return [by_name[n] for n in listed]
    if source.format in ("keras3", "keras3-archive"):
        return sorted(denses, key=lambda l: natural_key(l.path or l.name))
    return denses


def _finetuned_plan(
    source: Source,
    mapping: list[tuple[str, Layer]],
    denses: list[Layer],
    tail: list[tuple[str, dict]] | None,
    name: str,
    layout: str,
    c: Choices,
) -> Plan:
    """The plan for a fine-tuned model: the VGG's conv layers, then its top as convert.head reads it (or the conv
    layers alone with include_top=False)."""
    width = _width([layer for _, layer in mapping], layout)
    conv_kind = conventions.kernel_convention(
        source.format, source.backend, source.keras_version, layout, c.kernels, c.official
    )
    if c.include_top is False:
        dropped = [l.name.split("/")[-1] for l in denses]
        return _checked(source, Plan(name, False, 1000, layout, conv_kind, None, mapping, dropped))
    fine = finetuned_top.plan(source, denses, tail, width, c.image_size, c.pooling)
    flat = fine.top == "fc" or fine.top.startswith("mlp:")
    fc1 = conventions.fc1_order(source.path, source.config, layout, c.fc1_order, c.official) if flat else None
    result = Plan(name, True, fine.num_classes, layout, conv_kind, fc1, mapping + fine.mapping,
                  image_size=fine.image_size, finetuned=fine)  # fmt: skip
    return _checked(source, result)


def oihw_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """Theano dim ordering (out, in, h, w) -> (h, w, in, out); a pure layout change."""
    return kernel.transpose(2, 3, 1, 0)


def rotate_180(kernel_hwio: np.ndarray) -> np.ndarray:
    """A true-convolution kernel -> the cross-correlation kernel that gives the same output."""
    return kernel_hwio[::-1, ::-1]


def merge_softmax(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 2-unit softmax head -> the one sigmoid unit giving the same P(class 1).

    softmax([z0, z1])[1] = 1 / (1 + exp(z0 - z1)) = sigmoid(z1 - z0), and z1 - z0 = x @ (W[:,1] - W[:,0]) + b1 - b0."""
    return kernel[:, 1:2] - kernel[:, 0:1], bias[1:2] - bias[0:1]


def fc1_rows_chw_to_hwc(kernel: np.ndarray, side: int = arch.IMAGE_SIZE // 32) -> np.ndarray:
    """fc1 rows from channels-first flatten order (c, h, w) to NHWC flatten order (h, w, c)."""
    channels = kernel.shape[0] // (side * side)
    return kernel.reshape(channels, side, side, -1).transpose(1, 2, 0, 3).reshape(kernel.shape[0], -1)


def arrays(source: Source, p: Plan) -> Iterator[tuple[str, np.ndarray]]:
    """Canonical ("block1_conv1/kernel", array) pairs, read and transformed one layer at a time."""
    for name, layer in p.mapping:
        kernel, bias = layer.read(0), layer.read(1)
        if layer.kind == "conv":
            if p.layout == "oihw":
                kernel = oihw_to_hwio(kernel)
            if p.kernels.value == "theano":
                kernel = rotate_180(kernel)
        elif name == p.flat_layer and p.fc1.value == "chw":
            kernel = fc1_rows_chw_to_hwc(kernel, p.image_size // 32)
        elif name == "head" and p.finetuned.merges_softmax:
            kernel, bias = merge_softmax(kernel, bias)
        yield f"{name}/kernel", np.ascontiguousarray(kernel, dtype=np.float32)
        yield f"{name}/bias", bias


def _reject_non_vgg(source: Source, convs: list[Layer], denses: list[Layer]) -> None:
    """Says what the file looks like when it is clearly not a VGG (batch norm, 1x1/7x7 kernels)."""
    others = [l for l in source.layers if l.kind == "other"]
    sizes = sorted({_spatial(l.shapes[0]) for l in convs})
    if not others and sizes in ([], [(3, 3)]) and all(len(l.datasets) == 2 for l in convs + denses):
        if not convs:
            raise UserError(
                f"{source.path}: no convolution layers found ({len(source.layers)} weighted layers); not a VGG weights file"
            )
        return
    batch_norms = sum(1 for l in others if len(l.datasets) == 4 and all(len(s) == 1 for s in l.shapes))
    guess = (
        "a ResNet50"
        if len(convs) == 53 and batch_norms
        else "a ResNet-like network"
        if batch_norms
        else "another network"
    )
    kernel_sizes = ", ".join(f"{h}x{w}" for h, w in sizes) or "none"
    raise UserError(
        f"{source.path}: looks like {guess}, not VGG ({len(convs)} conv layers with {kernel_sizes} kernels, "
        f"{batch_norms} batch-norm layers); vgg-jax converts VGG11/13/16/19 only"
    )


def _reject_model_without_vgg(source: Source, convs: list[Layer], tail: list | None) -> None:
    """A Keras model (it has a model config) whose conv layers are neither VGG's names nor a VGG's count."""
    names = [l.name.split("/")[-1] for l in convs]
    if source.config is None or tail is not None or any(CANONICAL_CONV.match(n) for n in names):
        return
    if arch.arch_for_conv_count(len(convs)) is None:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise UserError(
            f"{source.path}: a Keras model with no VGG inside ({len(convs)} conv layer(s): {shown}); "
            "vgg-jax converts VGG11/13/16/19 and models built on one"
        )


def _spatial(shape: tuple[int, ...]) -> tuple[int, int]:
    """Kernel height/width whatever the layout (Theano OIHW keeps them last)."""
    return shape[2:] if shape[2:] == (3, 3) and shape[:2] != (3, 3) else shape[:2]


def _kernel_layout(source: Source, convs: list[Layer]) -> str:
    layouts = {"oihw" if l.shapes[0][2:] == (3, 3) and l.shapes[0][:2] != (3, 3) else "hwio" for l in convs}
    if len(layouts) > 1:
        raise UserError(f"{source.path}: conv kernels mix (O,I,H,W) and (H,W,I,O) layouts")
    return layouts.pop()


def _conv_mapping(source: Source, convs: list[Layer], want_arch: str | None) -> tuple[list[str], str]:
    """Canonical names for the conv layers and the architecture, from names when the file has Keras' names."""
    path = source.path
    if want_arch is not None and want_arch not in arch.DEPTHS:
        raise UserError(f"unknown architecture {want_arch!r}; choose one of {', '.join(arch.DEPTHS)}")
    names = [l.name.split("/")[-1] for l in convs]
    if all(CANONICAL_CONV.match(n) for n in names):
        present = set(names)
        exact = [a for a, d in arch.DEPTHS.items() if present == set(arch.conv_layer_names(d))]
        detected = exact[0] if exact else None
        if want_arch and detected and detected != want_arch:
            raise _wrong_arch(path, detected, len(convs), want_arch)
        if detected is None:
            supersets = [a for a, d in arch.DEPTHS.items() if present <= set(arch.conv_layer_names(d))]
            target = want_arch or (supersets[0] if supersets else None)
            if target is None:
                raise UserError(
                    f"{path}: conv layers {', '.join(sorted(present, key=natural_key))} match no VGG11/13/16/19"
                )
            expected = arch.conv_layer_names(arch.DEPTHS[target])
            missing = [n for n in expected if n not in present]
            extra = sorted(present - set(expected), key=natural_key)
            problems = [f"missing layer(s) {', '.join(missing)}"] if missing else []
            problems += [f"unexpected layer(s) {', '.join(extra)}"] if extra else []
            raise UserError(f"{path}: {'; '.join(problems)} for {target.upper()}")
        order = {n: i for i, n in enumerate(arch.conv_layer_names(arch.DEPTHS[detected]))}
        convs.sort(key=lambda l: order[l.name.split("/")[-1]])
        return [l.name.split("/")[-1] for l in convs], detected
    if source.format in ("keras3", "keras3-archive"):
        convs.sort(key=lambda l: natural_key(l.path or l.name))
    detected = arch.arch_for_conv_count(len(convs))
    if want_arch and detected and detected != want_arch:
        raise _wrong_arch(path, detected, len(convs), want_arch)
    target = want_arch or detected
    if detected is None:
        counts = "/".join(str(sum(d)) for d in arch.DEPTHS.values())
        expect = f"{target.upper()} has {sum(arch.DEPTHS[target])}" if target else f"VGG11/13/16/19 have {counts}"
        raise UserError(f"{path}: {len(convs)} conv layers, but {expect}: a layer is missing or this is not a VGG file")
    return arch.conv_layer_names(arch.DEPTHS[detected]), detected


def _wrong_arch(path, detected: str, count: int, wanted: str) -> UserError:
    return UserError(
        f"{path}: looks like {detected.upper()} ({count} conv layers), not {wanted.upper()}; "
        f"pass `arch={detected}` or leave `arch` out"
    )


def _check_dtypes(p: Plan) -> list[str]:
    """The distinct storage dtypes of the mapped weights, checked before any array is read (DatasetError:
    open_source names the file)."""
    dtypes: list[str] = []
    for _, layer in p.mapping:
        for dataset in layer.datasets:
            if (dtype := check_float(dataset)) not in dtypes:
                dtypes.append(dtype)
    return dtypes


def _check_shapes(source: Source, p: Plan) -> None:
    expected = p.shapes
    if p.finetuned:  # the head's own shape before a 2-unit softmax becomes one sigmoid unit
        head = dict(p.mapping)["head"]
        expected = {**expected, "head/kernel": head.shapes[0], "head/bias": head.shapes[1]}
    side = p.image_size // 32
    for name, layer in p.mapping:
        if len(layer.datasets) != 2:
            raise UserError(
                f"{source.path}: layer {layer.name} ({name}) has {len(layer.datasets)} weights; expected kernel and bias"
            )
        kernel, bias = layer.shapes
        want_k, want_b = expected[f"{name}/kernel"], expected[f"{name}/bias"]
        if layer.kind == "conv":
            got_k = (kernel[2], kernel[3], kernel[1], kernel[0]) if p.layout == "oihw" else kernel
        else:
            got_k = kernel
        if tuple(got_k) != want_k or tuple(bias) != want_b:
            src = f"{layer.name}" + (f" ({name})" if layer.name.split("/")[-1] != name else "")
            raise UserError(
                f"{source.path}: wrong shape in layer {src}: kernel {tuple(kernel)}, bias {tuple(bias)}; "
                f"{p.arch.upper()} expects kernel {_in_layout(want_k, layer.kind, p.layout)}, bias {want_b}"
                + (
                    f" (fc1 takes the {side}x{side}x512 block5_pool of a {p.image_size}x{p.image_size} image)"
                    if name == "fc1"
                    else ""
                )
            )


def _in_layout(shape: tuple[int, ...], kind: str, layout: str) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if kind == "conv" and layout == "oihw" else shape
