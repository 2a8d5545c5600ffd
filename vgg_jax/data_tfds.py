"""tfds sources: "tfds:NAME[:SPLIT]" read as encoded bytes, then decoded by the same code as image files.

Records stream in file order (tfrecord has no random access), so the training order is tfds'
seeded file shuffle plus a seeded shuffle buffer, both drawn from (seed, epoch); process shards
and `start_batch` are applied by position before any image is decoded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from vgg_jax.data_source import Source, fingerprint
from vgg_jax.errors import UserError

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


def _tfds() -> Any:
    from vgg_jax.data_decode import _tf

    _tf()  # quiet, GPUs hidden, before tensorflow_datasets imports tensorflow itself
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("tfds: sources need tensorflow-datasets: pip install tensorflow-datasets") from None
    return tfds


def open_tfds(spec: str, split: str, *, valid_fraction: float | None, manual_dir: str | None, download: bool) -> Source:
    """Resolve "tfds:NAME[:SPLIT]" to a prepared split; unprepared data is a one-line UserError saying where it goes."""
    name, _, explicit = spec[len("tfds:") :].partition(":")
    if not name:
        raise UserError(f"{spec}: expected tfds:NAME or tfds:NAME:SPLIT, e.g. tfds:cats_vs_dogs:train[:90%]")
    tfds = _tfds()
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
    )
    try:
        ds = _dataset(ref, shuffle_key=None)
    except Exception as e:
        raise UserError(f"tfds:{name}: cannot read split {tfds_split!r} ({_first_line(e)})") from None
    n = int(ds.cardinality())
    if n < 0:  # unknown cardinality: count once (records are read, images are not decoded)
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
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
                f"tfds:{name} has no validation split; pass a valid fraction (e.g. --valid-fraction 0.1) to hold out part of train"
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


def stream_elements(ref: TfdsSplit, positions: np.ndarray, slots: np.ndarray, shuffle_key: int | None) -> Any:
    """Elements {slot, data, label, id, index} for the records at `positions` (ascending) of the (shuffled) stream.

    Records of other processes or before `start_batch` are read and dropped undecoded.
    """
    from vgg_jax.data_decode import _tf

    tf = _tf()
    ds = _dataset(ref, shuffle_key)
    if shuffle_key is not None:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_key, reshuffle_each_iteration=False)
    if len(positions) == 0:
        return ds.take(0)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(positions, tf.int64), tf.constant(slots, tf.int64)),
        default_value=-1,
    )

    def element(g: Any, ex: dict) -> dict:
        label = tf.cast(ex[ref.label_key], tf.int32) if ref.label_key else tf.constant(-1, tf.int32)
        ident = ex[ref.id_key] if ref.id_key else tf.strings.as_string(g)
        return {"slot": table.lookup(g), "data": ex[ref.image_key], "label": label, "id": ident, "index": g}

    ds = ds.take(int(positions[-1]) + 1).enumerate().map(element)
    return ds.filter(lambda e: e["slot"] >= 0)


def read_ids(ref: TfdsSplit) -> list[str]:
    """All example ids of the split in order (one pass over the records, no image decoding)."""
    if ref.id_key is None:
        return [str(i) for i in range(int(_dataset(ref, None).cardinality()))]
    ids = _dataset(ref, None).map(lambda ex: ex[ref.id_key]).batch(4096)
    return [i.decode("utf-8", "replace") for batch in ids.as_numpy_iterator() for i in batch]
