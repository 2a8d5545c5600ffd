"""tfds sources: "tfds:NAME[:SPLIT]" read as encoded bytes, then decoded by the same code as image files.

Needs the `tfds` extra (tensorflow-datasets and tensorflow); without it a tfds: spec is one line naming it.
A split prepared as ArrayRecord is read through `tfds.data_source` (random access, no tf.data):
it is batched like a folder, by grain, in `data.permutation` order. A tfrecord split streams through
tf.data in file order (no random access), so the training order is tfds' seeded file shuffle plus a
seeded shuffle buffer, both drawn from (seed, epoch); process shards and `start_batch` are applied
by position before any image is decoded, and the records are decoded in a thread pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vgg_jax.data.decode import PADDING, Loader
from vgg_jax.data.source import Source, fingerprint
from vgg_jax.errors import UserError

EXTRA = "pip install 'vgg-jax[tfds]'"
SHUFFLE_BUFFER = 2048  # encoded images (~30 KB each for cats_vs_dogs): about 60 MB of host memory
VALID_SPLITS = ("validation", "valid", "val")


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """How to read one tfds split again (a Source keeps it; batches rebuild the reader each epoch)."""

    name: str
    split: str
    data_dir: str | None
    image_key: str
    label_key: str | None
    id_key: str | None
    random_access: bool = False  # prepared as ArrayRecord: read through tfds.data_source

    def records(self) -> tuple[Records, Records]:
        """(image bytes, labels) of every example, by index: picklable, for grain's workers."""
        return Records(self, self.image_key), Records(self, self.label_key)

    def read_ids(self) -> list[str]:
        """All example ids of the split in order (one pass over the records, no image decoding)."""
        if self.random_access:
            source = _data_source(self)
            return [_text(source[i][self.id_key]) if self.id_key else str(i) for i in range(len(source))]
        if self.id_key is None:
            return [str(i) for i in range(int(_dataset(self, None).cardinality()))]
        ids = _dataset(self, None).map(lambda ex: ex[self.id_key]).batch(4096)
        return [_text(i) for batch in ids.as_numpy_iterator() for i in batch]

    def stream_batches(self, plan: np.ndarray, shuffle_key: int | None, loader: Loader, batch_size: int, threads: int):
        """Decoded batches of `plan` (stream positions, or PADDING), from tf.data records decoded in `threads` threads."""
        positions = plan[plan != PADDING]
        records = _stream(self, positions, shuffle_key)
        return decode_in_threads(loader, records, plan, batch_size, threads)


class Records:
    """One feature of every example of an ArrayRecord split, by index (None: label -1); opens its reader lazily."""

    def __init__(self, ref: TfdsSplit, key: str | None):
        self.ref, self.key, self._source = ref, key, None

    def __getitem__(self, index: int) -> Any:
        if self.key is None:
            return -1
        if self._source is None:
            self._source = _data_source(self.ref)
        return self._source[int(index)][self.key]

    def __getstate__(self) -> dict:  # a worker process opens its own reader
        return {"ref": self.ref, "key": self.key, "_source": None}


_tf_module = None


def _tf(spec: str = "tfds:") -> Any:
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
                raise UserError(f"{spec}: tfds sources need the tfds extra ({e}): {EXTRA}") from None
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


def _tfds(spec: str = "tfds:") -> Any:
    """tensorflow_datasets, or a one-line UserError naming `spec` and the extra that brings it."""
    _tf(spec)  # quiet, GPUs hidden, before tensorflow_datasets imports tensorflow itself
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UserError(f"{spec}: tfds sources need the tfds extra ({e}): {EXTRA}") from None
    return tfds


def open_tfds(spec: str, split: str, *, valid_fraction: float | None, manual_dir: str | None, download: bool) -> Source:
    """Resolve "tfds:NAME[:SPLIT]" to a prepared split; unprepared data is a one-line UserError saying where it goes."""
    name, _, explicit = spec[len("tfds:") :].partition(":")
    if not name:
        raise UserError(f"{spec}: expected tfds:NAME or tfds:NAME:SPLIT, e.g. tfds:cats_vs_dogs:train[:90%]")
    tfds = _tfds(spec)
    data_dir = os.environ.get("TFDS_DATA_DIR") or None  # read now, not when tfds was imported
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends; tfds' own message spans many lines
        raise UserError(f"tfds:{name}: no such tensorflow-datasets dataset ({_first_line(e)})") from None
    if not builder.is_prepared():
        manual = manual_dir or os.path.join(
            data_dir or os.path.expanduser("~/tensorflow_datasets"), "downloads", "manual"
        )
        hint = f"prepare it where there is internet (`tfds build {name} --data_dir DIR`), copy DIR here and set TFDS_DATA_DIR=DIR, or put its downloaded archives in {manual}"
        if not download:
            raise UserError(f"tfds:{name} is not prepared in {builder.data_dir}; {hint}")
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        except Exception as e:
            raise UserError(
                f"tfds:{name} is not prepared in {builder.data_dir} and could not be downloaded ({_first_line(e)}); {hint}"
            ) from None
    tfds_split = explicit or _split_name(builder, name, split, valid_fraction)
    keys = builder.info.supervised_keys or ("image", "label")
    image_key, label_key = keys[0], keys[1]
    features = builder.info.features
    if image_key not in features:
        raise UserError(f"tfds:{name}: has no image feature {image_key!r} (features: {', '.join(features)})")
    label_key = label_key if label_key in features else None
    ref = TfdsSplit(
        name,
        tfds_split,
        data_dir,
        image_key,
        label_key,
        next((k for k in ("image/filename", "id") if k in features), None),
        random_access=_file_format(builder) == "array_record",
    )
    try:
        n = _count(ref)
    except Exception as e:
        raise UserError(f"tfds:{name}: cannot read split {tfds_split!r} ({_first_line(e)})") from None
    if n == 0:
        raise UserError(f"tfds:{name}:{tfds_split}: no examples")
    names = list(features[label_key].names) if label_key and hasattr(features[label_key], "names") else []
    return Source(
        name=f"tfds:{name}:{tfds_split}",
        class_names=names,
        num_examples=n,
        skipped=[],  # tfds drops broken files when it prepares the data (1,738 for cats_vs_dogs)
        fingerprint=fingerprint("tfds", builder.info.full_name, tfds_split, n),
        tfds=ref,
    )


def _file_format(builder: Any) -> str:
    fmt = getattr(builder.info, "file_format", None)
    return str(getattr(fmt, "value", fmt))


def _count(ref: TfdsSplit) -> int:
    if ref.random_access:
        return len(_data_source(ref))
    ds = _dataset(ref, shuffle_key=None)
    n = int(ds.cardinality())
    if n < 0:  # unknown cardinality: count once (records are read, images are not decoded)
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    return n


def _split_name(builder: Any, name: str, split: str, valid_fraction: float | None) -> str:
    available = set(builder.info.splits) or {"train"}  # under tfds.testing.mock_data the split list is empty
    if split == "test":
        if "test" not in available:
            raise UserError(f"tfds:{name} has no test split (splits: {', '.join(sorted(available))})")
        return "test"
    valid = next((s for s in VALID_SPLITS if s in available), None)
    if valid_fraction is None:
        if split == "valid" and valid is None:
            raise UserError(
                f"tfds:{name} has no validation split; pass a valid fraction (e.g. `valid_fraction=0.1`) to hold out part of train"
            )
        return valid if split == "valid" else "train"
    if valid is not None:
        raise UserError(
            f"tfds:{name} has a {valid} split, so valid_fraction={valid_fraction} is ambiguous; drop it to use that split"
        )
    percent = valid_fraction * 100
    if not 0 < valid_fraction < 1 or abs(percent - round(percent)) > 1e-9:
        raise UserError(
            f"valid_fraction must be a whole percentage between 0 and 1 for tfds sources. Received: valid_fraction={valid_fraction}"
        )
    cut = 100 - round(percent)  # tfds percent slices are disjoint and cover the split exactly
    return f"train[{cut}%:]" if split == "valid" else f"train[:{cut}%]"


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _data_source(ref: TfdsSplit) -> Any:
    tfds = _tfds()
    return tfds.data_source(
        ref.name, split=ref.split, data_dir=ref.data_dir, decoders={ref.image_key: tfds.decode.SkipDecoding()}
    )


def _dataset(ref: TfdsSplit, shuffle_key: int | None) -> Any:
    tfds = _tfds()
    builder = tfds.builder(ref.name, data_dir=ref.data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_key, add_tfds_id=False) if shuffle_key is not None else None
    return builder.as_dataset(
        split=ref.split,
        decoders={ref.image_key: tfds.decode.SkipDecoding()},
        shuffle_files=shuffle_key is not None,
        read_config=read_config,
    )


def _stream(ref: TfdsSplit, positions: np.ndarray, shuffle_key: int | None) -> Iterator[tuple[bytes, int]]:
    """(image bytes, label) of the records at `positions` (ascending) of the (shuffled) stream, in that order.

    Records of other processes or before `start_batch` are read and dropped undecoded.
    """
    if len(positions) == 0:
        return iter(())
    tf = _tf()
    ds = _dataset(ref, shuffle_key)
    if shuffle_key is not None:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_key, reshuffle_each_iteration=False)
    wanted = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(positions, tf.int64), tf.ones(len(positions), tf.int64)),
        default_value=0,
    )

    def element(g: Any, ex: dict) -> tuple:
        label = tf.cast(ex[ref.label_key], tf.int32) if ref.label_key else tf.constant(-1, tf.int32)
        return g, ex[ref.image_key], label

    ds = ds.take(int(positions[-1]) + 1).enumerate().map(element)
    ds = ds.filter(lambda g, data, label: wanted.lookup(g) > 0).map(lambda g, data, label: (data, label))
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def decode_in_threads(loader: Loader, records: Iterator, plan: np.ndarray, batch_size: int, threads: int):
    """Batches of `plan` for a stream without random access: `records` gives (bytes, label) for each planned entry
    that is not PADDING, in plan order; each batch is read, then decoded across `threads` threads."""

    def one(entry: tuple) -> dict:
        index, record = entry
        return loader(PADDING) if record is None else loader.element(index, *record)

    with ThreadPoolExecutor(threads) as pool:
        for lo in range(0, len(plan), batch_size):
            chunk = [(int(i), None if i == PADDING else next(records)) for i in plan[lo : lo + batch_size]]
            elements = list(pool.map(one, chunk))
            yield {k: np.stack([e[k] for e in elements]) for k in elements[0]}
