"""The 2017 recipe end to end as a Keras 3 (TensorFlow backend) user runs it: fit on an image folder; one `RESULT` line.

    .venv/bin/python benchmarks/peers_recipe_keras.py --data DIR --epochs 10 [--batch 32] [--image-size 224]
        [--tiny] [--json OUT]

DIR is in the recipe layout DIR/train/{cats,dogs}/*.jpg, DIR/valid/{cats,dogs}/*.jpg
(`vgg_jax.data.synthetic.write_folder` makes one). The model is the recipe's: VGG16 with its top built layer by
layer under the Keras layer names (block1_conv1 .. block5_pool, flatten, fc1, dropout, fc2, dropout_1), *with*
Dropout(0.5) after fc1 and after fc2 as the recipe's VGG16 had (`keras.applications.VGG16` has none), the 1000-way
softmax replaced by a new Dense(1, sigmoid) named `head`; every layer but the head has trainable=False (Keras
applies Dropout in training whatever `trainable` says, as the recipe's Keras did); Adam(1e-3), binary cross-entropy,
accuracy.

Weights are random (seeded): ImageNet weights cannot be downloaded here, and the timing does not depend on the
weight values. `--tiny` builds a small VGG with the same layer names (depths 1,1,1,1,1, widths 8,8,16,16,16,
fc 32, 32x32 images) so a test runs it in seconds.

Data as the recipe read it: `ImageDataGenerator(preprocessing_function=vgg16.preprocess_input)
.flow_from_directory(target_size=(S, S), class_mode="binary", batch_size=B, interpolation="nearest")`.
Keras 3.15 no longer exports ImageDataGenerator from `keras.preprocessing.image`, but still ships it, unchanged,
as `keras.src.legacy.preprocessing.image.ImageDataGenerator` (also what `tf.keras.preprocessing.image` resolves
to); the script takes the public name when present and that one otherwise, and records which in the JSON. The
recipe applied the caffe preprocessing (RGB->BGR, minus the ImageNet mean) in its first layer; here it is the
generator's `preprocessing_function`, `keras.applications.vgg16.preprocess_input`. The iterator is a Keras 3
PyDataset with its defaults (workers=1, no multiprocessing): Keras wraps it in `tf.data.Dataset.from_generator(...)
.prefetch(AUTOTUNE)`, so one Python thread decodes and resizes ahead of the steps.

Timing (time.perf_counter): `build_s` = building and compiling the model; `epoch_s` = each epoch's wall time from
a Callback's on_epoch_begin to on_epoch_end (training steps plus the validation pass, which Keras runs inside the
epoch; the first epoch also traces the tf.functions); `valid_s` = each epoch's validation pass (on_test_begin to
on_test_end), so epoch_s - valid_s is the training part; `fit_s` = the whole `model.fit` call, of which
`fit_before_first_epoch_s` and `fit_after_last_epoch_s` lie outside the epochs. `other_cores_busy` is the CPU time
other processes took during fit, in cores (0 = the machine was ours). TensorFlow's default threading is left
alone; `cpus` is `len(os.sched_getaffinity(0))`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.child import TINY_VGG, emit, skip
from benchmarks.timing import CpuShare, threads_info
from vgg_jax.errors import UserError
from vgg_jax.fileio import atomic_path, check_writable

FULL = {"depths": (2, 2, 3, 3, 3), "widths": (64, 128, 256, 512, 512), "fc_units": 4096, "size": 224}
TINY = TINY_VGG  # the smoke-test VGG11 every benchmark shares
CLASSES = ("cats", "dogs")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff"}  # what flow_from_directory lists
SEED = 0


def build(keras, arch: dict, size: int):
    """The recipe's VGG16 (Dropout after fc1 and fc2), frozen, with a new Dense(1, sigmoid) head; compiled."""
    layers = [keras.Input((size, size, 3))]
    for b, (n, width) in enumerate(zip(arch["depths"], arch["widths"]), 1):
        for i in range(1, n + 1):
            layers.append(keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"block{b}_conv{i}"))
        layers.append(keras.layers.MaxPooling2D(2, name=f"block{b}_pool"))
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(arch["fc_units"], activation="relu", name="fc1"),
        keras.layers.Dropout(0.5, name="dropout"),
        keras.layers.Dense(arch["fc_units"], activation="relu", name="fc2"),
        keras.layers.Dropout(0.5, name="dropout_1"),
    ]
    model = keras.Sequential(layers, name="vgg16_recipe")
    for layer in model.layers:
        layer.trainable = False
    model.add(keras.layers.Dense(1, activation="sigmoid", name="head"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def image_data_generator(keras):
    """Keras' ImageDataGenerator: the public name if this Keras still exports it, else its legacy module."""
    public = getattr(keras.preprocessing.image, "ImageDataGenerator", None)
    if public is not None:
        return public
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator


def check_data(root: Path) -> None:
    """One line when DIR is not in the recipe layout."""
    for split in ("train", "valid"):
        for name in CLASSES:
            folder = root / split / name
            if not folder.is_dir():
                raise UserError(f"{folder}: no such folder; --data needs DIR/{{train,valid}}/{{cats,dogs}}/*.jpg")


def loaders(keras, root: Path, size: int, batch: int) -> tuple:
    """The recipe's flow_from_directory iterators for train (shuffled) and valid."""
    gen = image_data_generator(keras)(preprocessing_function=keras.applications.vgg16.preprocess_input)
    opts = {"target_size": (size, size), "class_mode": "binary", "batch_size": batch, "interpolation": "nearest"}
    opts |= {"classes": list(CLASSES), "seed": SEED}
    train = gen.flow_from_directory(str(root / "train"), shuffle=True, **opts)
    valid = gen.flow_from_directory(str(root / "valid"), shuffle=False, **opts)
    for split, it in (("train", train), ("valid", valid)):
        if it.samples == 0:
            raise UserError(f"{root / split}: no images found; put .jpg/.png files under {root / split}/{{cats,dogs}}")
    return train, valid


def unreadable(root: Path, error: OSError) -> str:
    """The one-line message for an image fit could not read, naming the first file Pillow cannot decode."""
    from PIL import Image

    folders = [root / split / name for split in ("train", "valid") for name in CLASSES]
    for path in sorted(f for folder in folders for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as im:
                im.load()
        except OSError as e:
            return f"{path}: cannot read this image ({e.strerror or e}); fix or remove it"
    return f"{root}: cannot read an image ({str(error).splitlines()[0]}); fix or remove it"


def epoch_timer(keras):
    """A Callback that records each epoch's begin and end and each validation pass's length (perf_counter)."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._test_begin = 0.0
            self.begins: list[float] = []
            self.ends: list[float] = []
            self.valid: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.begins.append(time.perf_counter())

        def on_test_begin(self, logs=None):
            self._test_begin = time.perf_counter()

        def on_test_end(self, logs=None):
            self.valid.append(time.perf_counter() - self._test_begin)

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

    return EpochTimer()


def run(args: argparse.Namespace, keras) -> dict:
    """Builds, reads and fits as the recipe did; returns the RESULT dict."""
    import tensorflow as tf

    arch = TINY if args.tiny else FULL
    size = args.image_size or arch["size"]
    train, valid = loaders(keras, args.data, size, args.batch)
    keras.utils.set_random_seed(SEED)
    t = time.perf_counter()
    model = build(keras, arch, size)
    build_s = time.perf_counter() - t
    timer = epoch_timer(keras)
    with CpuShare() as share:
        t = time.perf_counter()
        try:
            history = model.fit(train, validation_data=valid, epochs=args.epochs, callbacks=[timer], verbose=2)
        except OSError as e:  # PIL's errors on a broken image file, raised from inside fit
            raise UserError(unreadable(args.data, e)) from None
        done = time.perf_counter()
    final = {k: float(history.history[k][-1]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    return {
        "framework": "keras",
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "tensorflow": tf.__version__,
        "epochs": args.epochs,
        "train_images": train.samples,
        "valid_images": valid.samples,
        "batch": args.batch,
        "image_size": size,
        "tiny": args.tiny,
        "build_s": round(build_s, 3),
        "epoch_s": [round(e - b, 3) for b, e in zip(timer.begins, timer.ends)],
        "valid_s": [round(x, 3) for x in timer.valid],
        "fit_s": round(done - t, 3),
        "fit_before_first_epoch_s": round(timer.begins[0] - t, 3),
        "fit_after_last_epoch_s": round(done - timer.ends[-1], 3),
        "other_cores_busy": share.other_cores,
        "final": final,
        "data_loader": "flow_from_directory",
        "data_loader_class": f"{type(train).__module__}.{type(train).__name__}",
        "interpolation": "nearest",
        "preprocess": "keras.applications.vgg16.preprocess_input (caffe)",
        "loader_workers": train.workers,
        "trainable_weights": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "non_trainable_weights": int(sum(math.prod(w.shape) for w in model.non_trainable_weights)),
        "weights": "random (seeded); ImageNet weights cannot be downloaded here",
        "seed": SEED,
        "cpus": threads_info()["cpus"],
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; bad numbers are refused by argparse in one line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="DIR with train/{cats,dogs} and valid/{cats,dogs}")
    p.add_argument("--epochs", type=_positive, default=10)
    p.add_argument("--batch", type=_positive, default=32)
    p.add_argument("--image-size", type=_positive, default=None, help="default 224 (32 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a small VGG with the same layer names, 32x32 images")
    p.add_argument("--json", type=Path, default=None, help="also write the RESULT object to this file")
    return p.parse_args(argv)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; a user mistake prints one line and returns 2."""
    args = parse(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"  # must precede the first keras import
    try:
        check_data(args.data)
        if args.json is not None:
            check_writable(args.json, "--json result")
        try:
            import keras
            import tensorflow
        except ImportError as e:
            skip(f"tensorflow/keras not installed: {e}")
        result = run(args, keras)
        emit(result)
        if args.json is not None:
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(result, indent=1) + "\n")
    except UserError as e:
        print(f"peers_recipe_keras: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
