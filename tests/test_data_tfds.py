"""tfds:NAME[:SPLIT] sources through the same decode and batching code, offline via tfds.testing.mock_data."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_jax import data
from vgg_jax.errors import UserError

tfds = pytest.importorskip("tensorflow_datasets")
N = 11  # mock examples; note mock_data ignores split slicing (train[:90%] yields all N)


@pytest.fixture
def mock_cats_vs_dogs():
    with tfds.testing.mock_data(num_examples=N):
        yield


def test_mock_cats_vs_dogs_eval_is_exactly_once_and_repeatable(mock_cats_vs_dogs):
    source = data.open_source("tfds:cats_vs_dogs")
    assert source.num_examples == N and source.class_names == ["cat", "dog"] and source.skipped == []
    assert source.describe().startswith(f"tfds:cats_vs_dogs:train: {N} images, 2 classes (cat, dog)")
    runs = [list(data.eval_batches(source, 4, image_size=8)) for _ in range(2)]
    assert len(runs[0]) == data.eval_steps(source, 4) == 3
    ids = [i for b in runs[0] for i, m in zip(b["id"], b["mask"]) if m]
    assert ids == source.ids and len(ids) == N
    assert list(runs[0][-1]["mask"]) == [True] * 3 + [False] and not runs[0][-1]["image"][3].any()
    assert all(
        b["image"].shape == (4, 8, 8, 3) and b["image"].dtype == np.uint8 and b["label"].dtype == np.int32
        for b in runs[0]
    )
    for a, b in zip(*runs):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    shards = [list(data.eval_batches(source, 2, image_size=8, process_index=p, process_count=2)) for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    assert sorted(i for s in shards for b in s for i, m in zip(b["id"], b["mask"]) if m) == sorted(source.ids)
    assert source.fingerprint == data.open_source("tfds:cats_vs_dogs").fingerprint


def test_mock_cats_vs_dogs_train_order_is_seeded_and_resumable(mock_cats_vs_dogs):
    source = data.open_source("tfds:cats_vs_dogs")

    def order(**kw):
        batches = list(data.train_batches(source, 2, image_size=8, **kw))
        assert all(b["image"].shape == (2, 8, 8, 3) and b["mask"].all() for b in batches)
        return [img.tobytes() for b in batches for img in b["image"]]

    first = order(seed=0)
    assert len(first) == data.steps_per_epoch(source, 2) * 2 == 10
    assert order(seed=0) == first and order(seed=1) != first and order(seed=0, epoch=1) != first
    assert order(seed=0, start_batch=2) == first[4:]
    shards = [order(seed=0, process_index=p, process_count=2) for p in range(2)]
    assert shards[0][:2] + shards[1][:2] == first[:4]


def test_tfds_split_names(mock_cats_vs_dogs):
    assert data.open_source("tfds:cats_vs_dogs", valid_fraction=0.1).name == "tfds:cats_vs_dogs:train[:90%]"
    assert data.open_source("tfds:cats_vs_dogs", "valid", valid_fraction=0.1).name == "tfds:cats_vs_dogs:train[90%:]"
    assert data.open_source("tfds:cats_vs_dogs:train[:50%]", "valid").name == "tfds:cats_vs_dogs:train[:50%]"
    with pytest.raises(UserError, match="no validation split"):
        data.open_source("tfds:cats_vs_dogs", "valid")


def test_unprepared_tfds_offline_is_one_line_saying_where_data_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError) as e:
        data.open_source("tfds:cats_vs_dogs", download=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cats_vs_dogs") in msg and "TFDS_DATA_DIR" in msg

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'download.microsoft.com'\nmore lines of traceback")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(UserError) as e:
        data.open_source("tfds:cats_vs_dogs", manual_dir=str(tmp_path / "manual"))
    msg = str(e.value)
    assert "\n" not in msg and "could not be downloaded (ConnectionError" in msg and str(tmp_path / "manual") in msg


def test_unknown_tfds_name_is_a_user_error():
    with pytest.raises(UserError, match="no such tensorflow-datasets dataset"):
        data.open_source("tfds:no_such_dataset_anywhere")
    with pytest.raises(UserError, match="expected tfds:NAME"):
        data.open_source("tfds:")


class VggJaxTinyPets(tfds.core.GeneratorBasedBuilder):
    """A real (not mocked) tfds dataset, prepared offline into a temp dir: tfrecords, split slicing, cardinality."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {
            "image": tfds.features.Image(),
            "image/filename": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["cat", "dog"]),
        }
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features), supervised_keys=("image", "label")
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(20):
            yield i, {"image": np.full((9 + i, 7, 3), 10 * i, np.uint8), "image/filename": f"{i}.jpg", "label": i % 2}


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_prepared_tfds_dataset_honours_split_slicing_and_tfds_data_dir(tmp_path, monkeypatch, file_format):
    """tfrecord streams through tf.data; ArrayRecord is read by index through tfds.data_source, never tf.data."""
    pytest.importorskip(
        "importlib_resources",
        reason="tfds' download_and_prepare needs it (etils.epath); not always installed with tfds",
    )
    tfds.builder("vgg_jax_tiny_pets", data_dir=str(tmp_path), file_format=file_format).download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    if file_format == "array_record":

        def no_tf_data(*args, **kwargs):
            raise AssertionError("an ArrayRecord split was read through tf.data")

        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", no_tf_data)
    train = data.open_source("tfds:vgg_jax_tiny_pets", valid_fraction=0.25)
    valid = data.open_source("tfds:vgg_jax_tiny_pets", "valid", valid_fraction=0.25)
    assert train.tfds.random_access == valid.tfds.random_access == (file_format == "array_record")
    assert (train.num_examples, valid.num_examples) == (15, 5)
    assert set(train.ids).isdisjoint(valid.ids) and sorted(train.ids + valid.ids, key=lambda i: int(i[:-4])) == [
        f"{i}.jpg" for i in range(20)
    ]
    batches = list(data.eval_batches(valid, 2, image_size=4))
    got = {
        i: (int(img[0, 0, 0]), int(lab))
        for b in batches
        for i, img, lab, m in zip(b["id"], b["image"], b["label"], b["mask"])
        if m
    }
    assert got == {f"{i}.jpg": (10 * i, i % 2) for i in (int(x[:-4]) for x in valid.ids)}
    order = [list(data.train_batches(train, 4, image_size=4, seed=s)) for s in (0, 0, 1)]
    assert len(order[0]) == 3 and all(np.array_equal(a["image"], b["image"]) for a, b in zip(order[0], order[1]))
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(order[0], order[2]))
