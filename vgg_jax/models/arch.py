"""VGG architectures as plain data: stage depths, widths and canonical parameter shapes.

Pure Python on purpose: the converter needs the expected shapes without importing jax.
"""

from __future__ import annotations

WIDTHS = (64, 128, 256, 512, 512)
FC_UNITS = 4096
IMAGE_SIZE = 224
MIN_IMAGE_SIZE = 32  # five 2x2 max-poolings

# Convolutions per stage, as in Simonyan & Zisserman (2015), configurations A, B, D, E.
DEPTHS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
TOP_LAYERS = ("fc1", "fc2", "predictions")


def conv_layer_names(depths: tuple[int, ...]) -> list[str]:
    """Keras names of the conv layers, in network order: block1_conv1, block1_conv2, ..."""
    return [f"block{b}_conv{i}" for b, n in enumerate(depths, 1) for i in range(1, n + 1)]


def arch_for_conv_count(count: int) -> str | None:
    """The standard architecture with `count` conv layers, or None."""
    return next((name for name, d in DEPTHS.items() if sum(d) == count), None)


def param_shapes(
    depths: tuple[int, ...] = DEPTHS["vgg16"],
    *,
    include_top: bool = True,
    classes: int = 1000,
    widths: tuple[int, ...] = WIDTHS,
    fc_units: int = FC_UNITS,
    image_size: int = IMAGE_SIZE,
) -> dict[str, tuple[int, ...]]:
    """Flat canonical shapes, e.g. {"block1_conv1/kernel": (3, 3, 3, 64), ..., "fc1/kernel": (25088, 4096)}.

    Conv kernels are HWIO and dense kernels (in, out), as in Keras and Flax.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    channels = 3
    for name, width in zip(conv_layer_names(depths), _stage_widths(depths, widths)):
        shapes[f"{name}/kernel"] = (3, 3, channels, width)
        shapes[f"{name}/bias"] = (width,)
        channels = width
    if include_top:
        side = image_size // 2 ** len(depths)
        fan_in = side * side * channels
        for name, units in zip(TOP_LAYERS, (fc_units, fc_units, classes)):
            shapes[f"{name}/kernel"] = (fan_in, units)
            shapes[f"{name}/bias"] = (units,)
            fan_in = units
    return shapes


def param_count(shapes: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _stage_widths(depths: tuple[int, ...], widths: tuple[int, ...]) -> list[int]:
    return [w for n, w in zip(depths, widths) for _ in range(n)]
