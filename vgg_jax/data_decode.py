"""Parallel decode + resize on the host with tf.data: encoded images -> uint8 [B, S, S, 3] numpy batches.

tf.data was measured against Pillow in a thread pool (docs/DATA.md): it decodes and resizes a
500x375 JPEG in 0.84 ms of CPU against 1.55 ms, and its C++ threads do not contend for the GIL.
This is the only module that imports tensorflow, and only when a batch is first asked for.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from vgg_jax.errors import UserError

RESIZE_MODES = ("squash", "center-crop", "pad")
AUGMENT_ZOOM = 256 / 224  # augmentation resizes to 256 for a 224 crop, the classic ImageNet recipe
PAD_RGB = (123.68, 116.779, 103.939)  # ImageNet mean: "pad" borders become 0 after caffe preprocessing

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


def decode_resize(data: Any, size: int, resize: str) -> Any:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes (tf string) -> uint8 [size, size, 3] RGB.

    decode_image gives RGB for grayscale, CMYK, palette and alpha inputs and the first frame of a
    GIF. Resizing is bilinear without antialiasing, as in keras.utils.image_dataset_from_directory.
    """
    tf = _tf()
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    if resize == "center-crop":
        side = tf.minimum(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = tf.image.resize(image[top : top + side, left : left + side], (size, size))
    elif resize == "pad":
        scale = size / tf.cast(tf.maximum(h, w), tf.float32)
        nh = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        nw = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        mean = tf.constant(PAD_RGB, tf.float32)
        x = tf.image.resize(image, tf.stack([nh, nw])) - mean
        top, left = (size - nh) // 2, (size - nw) // 2
        x = tf.pad(x, [[top, size - nh - top], [left, size - nw - left], [0, 0]]) + mean
        x.set_shape([size, size, 3])
    else:
        x = tf.image.resize(image, (size, size))
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def augment(data: Any, size: int, resize: str, key: Any) -> Any:
    """Training augmentation: resize to size*256/224, random size x size crop, random horizontal flip.

    `key` is an int64 [2] seed: stateless ops make the crop a pure function of (seed, epoch, example).
    """
    tf = _tf()
    image = decode_resize(data, round(size * AUGMENT_ZOOM), resize)
    image = tf.image.stateless_random_crop(image, (size, size, 3), seed=key)
    return tf.image.stateless_random_flip_left_right(image, seed=key[::-1])


def decoded_batches(
    elements: Any, batch_size: int, *, size: int, resize: str, augment_key: int | None, threads: int | None
) -> Iterator[dict]:
    """tf.data elements {slot, label, id, path | data, index} -> numpy batches {slot, image, label, id}.

    Elements that fail to read or decode are dropped (ignore_errors), never raised: the caller
    finds their slots missing and masks them, so a bad file costs one masked example, not the run.
    """
    tf = _tf()
    if resize not in RESIZE_MODES:
        raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}. Received: resize={resize!r}")

    def load(ex: dict) -> dict:
        data = tf.io.read_file(ex["path"]) if "path" in ex else ex["data"]
        if augment_key is None:
            image = decode_resize(data, size, resize)
        else:
            image = augment(data, size, resize, tf.stack([tf.constant(augment_key, tf.int64), ex["index"]]))
        return {"slot": ex["slot"], "image": image, "label": ex["label"], "id": ex["id"]}

    ds = elements.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = threads or default_threads()
    options.threading.max_intra_op_parallelism = 1  # one image per thread: parallelism across images scales best
    return ds.with_options(options).as_numpy_iterator()


def decode_error(path: str) -> str:
    """Why tf.io.decode_image rejects `path` (run again eagerly, only for the rare file that failed in the pipeline)."""
    tf = _tf()
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except Exception as e:  # tf.errors.*: the message starts with a {{function_node ...}} prefix
        message = re.sub(r"\{\{.*?\}\}\s*", "", getattr(e, "message", str(e))).split("[Op:")[0].strip()
        return f"failed to decode: {message[:120]}" if message else "failed to decode"
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
