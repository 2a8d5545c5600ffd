"""The two conventions a VGG file's arrays can follow, and how we know which one a file follows.

- Kernel convention: "tf" (kernels for cross-correlation) or "theano" (kernels for true convolution,
  stored rotated 180 degrees).
- fc1 row order: "hwc" (a channels_last Flatten) or "chw" (a channels-first Flatten).

Each comes with its source: "override" (given on the command line), "recorded" (the file's backend
attribute or model config says so), "known" (the official Keras release file, recognised by md5) or
"inferred" (from the kernel layout alone: a guess the report warns about).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vgg_jax.errors import UserError

CORRELATING_BACKENDS = ("tensorflow", "cntk", "jax", "torch", "numpy", "openvino", "mlx")
CHANNELS_FIRST = ("channels_first", "th")
CHANNELS_LAST = ("channels_last", "tf")


@dataclass(frozen=True)
class Convention:
    """A convention value ("tf"/"theano" or "hwc"/"chw"), where it comes from and why."""

    value: str
    source: str  # "override" | "recorded" | "known" | "inferred"
    reason: str


def kernel_convention(
    fmt: str, backend: str | None, keras_version: str | None, layout: str, override: str | None, official: str | None
) -> Convention:
    """Theano (true convolution) or TensorFlow (correlation) kernels, and how we know."""
    if override is not None:
        return Convention(override, "override", f"`kernels={override}`")
    if official:
        return Convention("tf", "known", f"official Keras release file {official} (keras.applications loads it as is)")
    if backend == "theano":
        return Convention("theano", "recorded", "backend attribute 'theano'")
    if backend in CORRELATING_BACKENDS:
        return Convention("tf", "recorded", f"backend attribute '{backend}'")
    if fmt in ("keras3", "keras3-archive") or (keras_version or "").startswith("3."):
        return Convention("tf", "recorded", "a Keras 3 file (every Keras 3 backend correlates)")
    if fmt == "keras0":
        return Convention("theano", "inferred", "a Keras 0.x file: Theano era (the recipe's vgg16_th.h5)")
    if layout == "oihw":
        return Convention(
            "theano", "inferred", "(O,I,H,W) kernels and no backend attribute, as in *_th_dim_ordering_th_kernels.h5"
        )
    return Convention("tf", "inferred", "(H,W,I,O) kernels and no backend attribute")


def fc1_order(path: Path, config: dict | None, layout: str, override: str | None, official: str | None) -> Convention:
    """The row order of fc1, from the model config's Flatten when the file has one, else from the kernel layout."""
    if override is not None:
        return Convention(override, "override", f"`fc1_order={override}`")
    if official:
        return Convention("hwc", "known", f"official Keras release file {official} (channels_last)")
    recorded = _recorded_fc1_order(path, config)
    if recorded:
        return recorded
    if layout == "oihw":
        return Convention(
            "chw", "inferred", "(O,I,H,W) kernels: a channels-first model; no model config says otherwise"
        )
    return Convention("hwc", "inferred", "(H,W,I,O) kernels: taken for channels_last; no model config says otherwise")


def _recorded_fc1_order(path: Path, config: dict | None) -> Convention | None:
    """From the layers before and at the Flatten. Keras >= 2.1's Flatten records data_format and reorders
    channels_first input to (h,w,c); older Flattens (no data_format) keep the layout of what they flatten."""
    layers = config_layers(config)
    flatten = next((i for i, (cls, _) in enumerate(layers) if cls == "Flatten"), None)
    if flatten is None:
        return None
    before = [_layout(cfg) for _, cfg in layers[:flatten] if _layout(cfg)]
    if not before:
        return None
    incoming = before[-1]
    flatten_format = layers[flatten][1].get("data_format")
    if flatten_format in CHANNELS_FIRST and incoming == "channels_last":
        raise UserError(
            f"{path}: the model config has Flatten(data_format='channels_first') after channels_last layers, which "
            "orders fc1 rows (w,c,h); vgg-jax does not convert that (pass `fc1_order` if you know the rows' order)"
        )
    if flatten_format in CHANNELS_FIRST:
        return Convention("hwc", "recorded", "model config: Flatten(data_format='channels_first') reorders to (h,w,c)")
    if incoming == "channels_last":
        return Convention("hwc", "recorded", "model config: channels_last layers before Flatten")
    return Convention(
        "chw", "recorded", "model config: channels_first layers before a Flatten that keeps their order (Keras <= 2.0)"
    )


def data_format(config: dict | None) -> str | None:
    """channels_first / channels_last as the model config records it (first layer that says), else None."""
    return next((fmt for _, cfg in config_layers(config) if (fmt := _layout(cfg))), None)


def config_layers(config: dict | None) -> list[tuple[str, dict]]:
    """(class_name, layer config) of every layer in a Keras 1/2/3 model config, nested models expanded in place."""
    out: list[tuple[str, dict]] = []

    def walk(node) -> None:
        inner = node.get("config") if isinstance(node, dict) else None
        layers = inner if isinstance(inner, list) else inner.get("layers") if isinstance(inner, dict) else None
        if isinstance(layers, list):
            for layer in layers:
                walk(layer)
        elif isinstance(node, dict) and isinstance(inner, dict):
            out.append((str(node.get("class_name")), inner))

    if isinstance(config, dict):
        walk(config)
    return out


def _layout(cfg: dict) -> str | None:
    """Keras 2/3 `data_format` or Keras 1 `dim_ordering` ("th"/"tf") of one layer config, as channels_first/last."""
    value = cfg.get("data_format") or cfg.get("dim_ordering")
    if value in CHANNELS_FIRST:
        return "channels_first"
    if value in CHANNELS_LAST:
        return "channels_last"
    return None
