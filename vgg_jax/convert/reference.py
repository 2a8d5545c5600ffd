"""A float64 numpy VGG forward in a weight file's own convention: the yardstick for parity checks.

Written from the definitions, independently of the converter: Theano-era files hold (O, I, H, W)
kernels for true convolution and flatten channels-first; TensorFlow-convention files hold
(H, W, I, O) kernels for cross-correlation and flatten channels-last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BGR_MEAN = np.array([103.939, 116.779, 123.68])


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> float64 BGR minus the ImageNet mean (Keras "caffe" mode)."""
    return images.astype(np.float64)[..., ::-1] - BGR_MEAN


def conv3x3_same(x: np.ndarray, taps, bias: np.ndarray, true_convolution: bool) -> np.ndarray:
    """[N, H, W, I] -> [N, H, W, O], zero padding 1. `taps(ky, kx)` gives the [I, O] matrix at kernel
    position (ky, kx). Cross-correlation reads x[y + ky - 1]; true convolution reads x[y - ky + 1]."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, bias.shape[0]))
    for ky in range(3):
        for kx in range(3):
            dy, dx = (2 - ky, 2 - kx) if true_convolution else (ky, kx)
            out += padded[:, dy : dy + h, dx : dx + w, :] @ taps(ky, kx)
    return out + bias


def forward(
    convs: Sequence[tuple[np.ndarray, np.ndarray]],
    denses: Sequence[tuple[np.ndarray, np.ndarray]],
    depths: Sequence[int],
    images: np.ndarray,
    layout: str = "hwio",
    true_convolution: bool = False,
    pooling: str | None = None,
    fc1_order: str | None = None,
) -> np.ndarray:
    """VGG forward of uint8 RGB images with weights exactly as stored in the file.

    Args:
      convs: (kernel, bias) per conv layer, network order; kernels (3,3,I,O) for layout "hwio",
        (O,I,3,3) for "oihw" (Theano dim ordering, which also flattens channels-first for fc1).
      denses: (kernel (in, out), bias) for fc1, fc2, predictions, or empty for no-top.
      true_convolution: the file's kernels are for true convolution (Theano), not correlation.
      fc1_order: fc1's row order, "chw" or "hwc"; None follows the layout.
    Returns: logits [N, classes] (with denses), else block5_pool features [N, h, w, C] in NHWC
      or [N, C] with pooling "avg"/"max".
    """
    x = preprocess(images)
    layer = iter(convs)
    for depth in depths:
        for _ in range(depth):
            kernel, bias = next(layer)
            kernel = np.asarray(kernel, np.float64)
            if layout == "oihw":
                taps = lambda ky, kx, k=kernel: k[:, :, ky, kx].T
            else:
                taps = lambda ky, kx, k=kernel: k[ky, kx]
            x = np.maximum(conv3x3_same(x, taps, np.asarray(bias, np.float64), true_convolution), 0)
        n, h, w, c = x.shape
        x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    if not denses:
        return {"avg": lambda: x.mean(axis=(1, 2)), "max": lambda: x.max(axis=(1, 2)), None: lambda: x}[pooling]()
    # Theano-era models flatten NCHW activations; channels_last models flatten NHWC.
    return top(x, denses, fc1_order or ("chw" if layout == "oihw" else "hwc"))


def top(features: np.ndarray, denses: Sequence[tuple[np.ndarray, np.ndarray]], fc1_order: str) -> np.ndarray:
    """fc1, fc2, predictions in float64 over NHWC block5_pool features flattened in fc1's row order ("chw"/"hwc")."""
    x = features.transpose(0, 3, 1, 2) if fc1_order == "chw" else features
    x = x.reshape(x.shape[0], -1)
    for i, (kernel, bias) in enumerate(denses):
        x = x @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
        if i < len(denses) - 1:
            x = np.maximum(x, 0)
    return x
