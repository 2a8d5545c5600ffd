"""Parallel decode + resize on the host with tf.data: encoded images -> uint8 [B, S, S, 3] numpy batches.

tf.data reads the files and runs the threads; each image is decoded and resized by vgg_jax.resize
(Pillow), the one implementation `classify` and the library use too, so the same file at the same
options gives the same pixels everywhere. This is the only module that imports tensorflow, and
only when a batch is first asked for.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from typing import Any

from vgg_jax import resize as resizing
from vgg_jax.errors import UserError

AUGMENT_ZOOM = 256 / 224  # augmentation resizes to 256 for a 224 crop, the classic ImageNet recipe

_tf_module = None


def _tf() -> Any:
    """tensorflow, imported on first use, quiet, and with every GPU hidden so it never takes accelerator memory."""
    global _tf_module
    if _tf_module is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # TF's C++ logs its CPU-feature and CUDA-probe lines before reading that variable:
        # silence file descriptor 2 for the import and device setup only.
        with _quiet_stderr():
            try:
                import tensorflow as tf
            except ImportError as e:
                raise UserError(f"the image pipeline needs tensorflow ({e}): pip install 'vgg-jax[data]'") from None
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:  # TF was initialised elsewhere first; its devices can no longer change
                pass
        _tf_module = tf
    return _tf_module


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def default_threads() -> int:
    """Cores this process may run on (the affinity mask, which containers and `taskset` set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_resize(data: Any, size: int, resize: str, interpolation: str) -> Any:
    """Encoded image bytes (a tf string scalar) -> uint8 [size, size, 3] RGB, by vgg_jax.resize.decode_resize.

    Pillow runs in the tf.data thread through tf.numpy_function; it releases the GIL while it
    decodes and resizes, so threads still work in parallel. A file Pillow rejects fails the op,
    which `ignore_errors()` drops.
    """
    tf = _tf()
    image = tf.numpy_function(
        functools.partial(resizing.decode_resize, size=size, mode=resize, interpolation=interpolation),
        [data],
        tf.uint8,
        stateful=False,
    )
    image.set_shape([size, size, 3])
    return image


def augment(data: Any, size: int, resize: str, interpolation: str, key: Any) -> Any:
    """Training augmentation: resize to size*256/224, random size x size crop, random horizontal flip.

    `key` is an int64 [2] seed: stateless ops make the crop a pure function of (seed, epoch, example).
    """
    tf = _tf()
    image = decode_resize(data, round(size * AUGMENT_ZOOM), resize, interpolation)
    image = tf.image.stateless_random_crop(image, (size, size, 3), seed=key)
    return tf.image.stateless_random_flip_left_right(image, seed=key[::-1])


def decoded_batches(
    elements: Any,
    batch_size: int,
    *,
    size: int,
    resize: str,
    interpolation: str = "nearest",
    augment_key: int | None,
    threads: int | None,
) -> Iterator[dict]:
    """tf.data elements {slot, label, id, path | data, index} -> numpy batches {slot, image, label, id}.

    Elements that fail to read or decode are dropped (ignore_errors), never raised: the caller
    finds their slots missing and masks them, so a bad file costs one masked example, not the run.
    """
    tf = _tf()
    resizing.check_options(resize, interpolation)

    def load(ex: dict) -> dict:
        data = tf.io.read_file(ex["path"]) if "path" in ex else ex["data"]
        if augment_key is None:
            image = decode_resize(data, size, resize, interpolation)
        else:
            key = tf.stack([tf.constant(augment_key, tf.int64), ex["index"]])
            image = augment(data, size, resize, interpolation, key)
        return {"slot": ex["slot"], "image": image, "label": ex["label"], "id": ex["id"]}

    ds = elements.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = threads or default_threads()
    options.threading.max_intra_op_parallelism = 1  # one image per thread: parallelism across images scales best
    return ds.with_options(options).as_numpy_iterator()


def decode_error(path: str) -> str:
    """Why `path` failed in the pipeline, in one line: Pillow's reason, found by decoding it again (rare files only)."""
    try:
        resizing.decode(path)
    except resizing.DecodeError as e:
        return f"failed to decode: {e.reason}"
    return "failed to decode in the pipeline, decodes alone"


def file_elements(slots: Any, paths: list[str], labels: Any, ids: list[str], indices: Any) -> Any:
    """The tf.data elements of a folder source: one per slot, the file read inside the parallel map."""
    tf = _tf()
    return tf.data.Dataset.from_tensor_slices(
        {
            "slot": slots.astype("int64"),
            "path": paths,
            "label": labels.astype("int32"),
            "id": ids,
            "index": indices.astype("int64"),
        }
    )
