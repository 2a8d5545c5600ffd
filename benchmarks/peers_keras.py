"""One Keras 3 peer measurement (JAX or TensorFlow backend), as a child of run_all.py; one `RESULT` line.

    python benchmarks/peers_keras.py --backend tensorflow --mode train --batch 8

The recipe as a Keras user writes it: `keras.applications.VGG16(weights=None)`, every layer
trainable=False, a new Dense(1, sigmoid) on fc2, Adam(1e-3), binary cross-entropy, `train_on_batch`
(or `predict_on_batch`), random normal float32 inputs. `jit_compile` stays at Keras' "auto" (off for
TensorFlow on a CPU-only machine: oneDNN runs it). `--mode ceiling` times a TF conv and matmul.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.child import TINY_VGG, add_step_arguments, emit, skip
from benchmarks.timing import repeat_ops, threads_info, timed_steps

TINY = TINY_VGG  # the smoke-test VGG11 every benchmark shares


def build(keras, tiny: bool):
    """VGG16 (or the tiny variant, same layer names) with a frozen body and a new 1-unit sigmoid head."""
    if tiny:
        x = inputs = keras.Input((TINY["size"], TINY["size"], 3))
        for b, (n, width) in enumerate(zip(TINY["depths"], TINY["widths"]), 1):
            for i in range(1, n + 1):
                x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"block{b}_conv{i}")(x)
            x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(TINY["fc_units"], activation="relu", name="fc1")(x)
        x = keras.layers.Dense(TINY["fc_units"], activation="relu", name="fc2")(x)
        base = keras.Model(inputs, x)
    else:
        vgg = keras.applications.VGG16(weights=None, include_top=True)
        base = keras.Model(vgg.input, vgg.get_layer("fc2").output)
    for layer in base.layers:
        layer.trainable = False
    out = keras.layers.Dense(1, activation="sigmoid", name="head")(base.output)
    model = keras.Model(base.input, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def ceiling(repeats: int, tiny: bool) -> dict:
    import tensorflow as tf

    b, s, c, n = (2, 28, 64, 512) if tiny else (8, 56, 256, 4096)
    x = tf.random.normal((b, s, s, c))
    w = tf.random.normal((3, 3, c, c)) * 0.02
    a = tf.random.normal((n, n))
    ops = {
        "conv": (lambda: tf.nn.conv2d(x, w, 1, "SAME").numpy(), 2 * b * s * s * c * c * 9),
        "matmul": (lambda: tf.matmul(a, a).numpy(), 2 * n**3),
    }
    return {**repeat_ops(ops, repeats), "tensorflow": tf.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["jax", "tensorflow"], required=True)
    p.add_argument("--mode", choices=["train", "predict", "ceiling"], required=True)
    add_step_arguments(p)
    args = p.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend  # must precede the first keras import
    try:
        if args.backend == "tensorflow":
            import tensorflow
        else:
            import jax
        import keras
    except ImportError as e:
        skip(f"{args.backend}/keras not installed: {e}")
    if args.mode == "ceiling":
        emit({**ceiling(args.repeats, args.tiny), **threads_info()})
        return
    import numpy as np

    t = time.perf_counter()
    model = build(keras, args.tiny)
    build_s = time.perf_counter() - t
    size = TINY["size"] if args.tiny else 224
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 2, (args.batch, 1)).astype(np.float32)
    conv1 = model.get_layer("block1_conv1").get_weights()[0][..., :4].copy()
    step = (lambda: model.train_on_batch(x, y)) if args.mode == "train" else (lambda: model.predict_on_batch(x))
    timing = timed_steps(step, args.steps, args.warmup)
    emit(
        {
            **timing,
            "compile_s": round(max(0.0, timing["first_step_s"] - timing["median_s"]), 3),
            "build_s": round(build_s, 2),
            "backbone_unchanged": bool(
                np.array_equal(conv1, model.get_layer("block1_conv1").get_weights()[0][..., :4])
            ),
            "trainable_weights": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "non_trainable_weights": int(sum(np.prod(w.shape) for w in model.non_trainable_weights)),
            "jit_compile": getattr(model, "jit_compile", None),
            "keras": keras.__version__,
            "backend_version": _backend_version(args.backend),
            **threads_info(),
        }
    )


def _backend_version(backend: str) -> str:
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.__version__
    import jax

    return jax.__version__


if __name__ == "__main__":
    main()
