"""Kaggle Dogs vs Cats' flat layout: ROOT/train/<label>.<id>.jpg, ROOT/test1/<id>.jpg, on real JPEG files."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL
from vgg_jax import data
from vgg_jax.cli import main
from vgg_jax.train.config import TrainConfig
from vgg_jax.errors import UserError
from vgg_jax.data.synthetic import draw
from vgg_jax.train.trainer import train

SEED = 5  # images drawn by vgg_jax.data.synthetic.draw

pytestmark = pytest.mark.usefixtures("own_cache")  # conftest: a cache folder of this module's own


def _jpeg(path, label: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw(label, rng, (24, 24))).save(path, quality=90)


def write_kaggle(root, per_class: int = 20, test: int = 12, name: str = "{label}.{i}.jpg", seed: int = SEED):
    """ROOT/train/cat.<i>.jpg and dog.<i>.jpg (or `name`), ROOT/test1/1.jpg .. <test>.jpg; returns root."""
    rng = np.random.default_rng(seed)
    for label, cls in enumerate(("cat", "dog")):
        for i in range(per_class):
            _jpeg(root / "train" / name.format(label=cls, i=i), label, rng)
    for i in range(1, test + 1):
        _jpeg(root / "test1" / f"{i}.jpg", int(rng.integers(2)), rng)
    return root


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    return write_kaggle(tmp_path_factory.mktemp("data") / "kaggle")


@pytest.fixture(scope="module")
def kaggle_run(kaggle, tmp_path_factory, cache):
    """A tiny run trained on `--data ROOT`, and what it printed."""
    out = tmp_path_factory.mktemp("runs") / "root"
    capture = tmp_path_factory.mktemp("log") / "stdout"
    import contextlib

    with pytest.MonkeyPatch.context() as mp, open(capture, "w") as f, contextlib.redirect_stdout(f):
        mp.setenv("VGG_JAX_CACHE", str(cache))
        result = train(TrainConfig(data=str(kaggle), out=str(out), epochs=1, weights="random", **SMALL))
    return out, result, capture.read_text()


def _open(spec, split: str = "train", **kw) -> data.Source:
    """Opens `spec` as the trainer does: 10% of train held out when there is no valid/ folder."""
    return data.open_source(spec, split, valid_fraction_default=data.DEFAULT_VALID_FRACTION, **kw)


def _one_line(spec, *args, **kw) -> str:
    with pytest.raises(UserError) as e:
        _open(spec, *args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_root_trains_with_labels_from_file_names_and_a_default_valid_part(kaggle, kaggle_run):
    _, result, printed = kaggle_run
    lines = printed.splitlines()
    train_line = next(line for line in lines if line.startswith("train: "))
    valid_line = next(line for line in lines if line.startswith("valid: "))
    assert "labels from file names: cat 20, dog 20" in train_line, printed
    assert "no valid/ folder: holding out 10% of train (`valid_fraction=0.1`, seed 0)" in valid_line, printed
    train_src = _open(kaggle, "train")
    valid_src = _open(kaggle, "valid")
    assert train_src.class_names == valid_src.class_names == ["cat", "dog"]
    assert set(train_src.ids).isdisjoint(valid_src.ids) and train_src.num_examples + valid_src.num_examples == 40
    assert all(i.split(".")[0] == train_src.class_names[l] for i, l in zip(train_src.ids, train_src.labels))
    assert result["count"] == valid_src.num_examples and np.isfinite(result["loss"])


def test_evaluate_reopens_the_carved_valid_part(kaggle, kaggle_run):
    """`vgg-jax evaluate RUN` on a Kaggle-layout run: the same 10% valid part the trainer held out."""
    from vgg_jax.inference.evaluate import evaluate

    out, result, _ = kaggle_run
    again = evaluate(out)
    assert again["count"] == result["count"] == _open(kaggle, "valid").num_examples
    assert abs(again["loss"] - result["loss"]) < 1e-5


def test_train_folder_itself_trains_the_same_split(kaggle, tmp_path, capsys):
    root_valid = _open(kaggle, "valid")
    direct_valid = _open(kaggle / "train", "valid")
    assert direct_valid.ids == root_valid.ids and direct_valid.class_names == ["cat", "dog"]
    run = TrainConfig(data=str(kaggle / "train"), out=str(tmp_path / "run"), epochs=1, weights="random", **SMALL)
    result = train(run)
    printed = capsys.readouterr().out
    assert "labels from file names: cat 20, dog 20" in printed and "holding out 10% of train" in printed, printed
    assert result["count"] == root_valid.num_examples


@pytest.mark.parametrize("where", ["test1", "root"])
def test_predict_writes_test1_ids_in_natural_order(kaggle, kaggle_run, tmp_path, where):
    target = kaggle / "test1" if where == "test1" else kaggle
    out = tmp_path / "submission.csv"
    assert main(["predict", str(kaggle_run[0]), str(target), "--csv", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, 13)]
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows[1:])


def test_regex_override_labels_other_names(tmp_path, capsys):
    root = write_kaggle(tmp_path / "k", per_class=6, test=2, name="img_{label}_{i}.jpg")
    assert "images but no class subfolders" in _one_line(root, "train")  # no <label>. prefix: nothing detected
    src = _open(root, "train", valid_fraction=0.25, labels_from_filename=r"_(cat|dog)_")
    assert src.class_names == ["cat", "dog"]
    assert all(f"_{src.class_names[l]}_" in i for i, l in zip(src.ids, src.labels))
    assert "labels from file names (`labels_from_filename='_(cat|dog)_'`): cat" in src.describe()
    # the override wins over detection: first letters instead of the <label>. prefix
    flat = write_kaggle(tmp_path / "f", per_class=6, test=0)
    both = _open(flat, "train", valid_fraction=0.25, labels_from_filename=r"^(\w)")
    assert both.class_names == ["c", "d"]


def test_cli_flag_reaches_the_config():
    from vgg_jax.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--labels-from-filename", r"^(cat|dog)\."])
    assert _train_config(args).labels_from_filename == r"^(cat|dog)\."


def test_valid_part_is_stable_whatever_the_listing_order(kaggle, tmp_path, monkeypatch):
    valid = _open(kaggle, "valid", seed=3).ids
    train_ids = _open(kaggle, "train", seed=3).ids
    real_scandir = os.scandir

    class Reversed:
        def __init__(self, path):
            self.entries = list(real_scandir(path))[::-1]

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(os, "scandir", Reversed)
    assert _open(kaggle, "valid", seed=3).ids == valid
    monkeypatch.undo()
    copy = write_kaggle(tmp_path / "copy")
    _jpeg(copy / "test1" / "99.jpg", 0, np.random.default_rng(SEED))  # an unrelated file elsewhere
    _jpeg(copy / "train" / "dog.1000.jpg", 1, np.random.default_rng(SEED))  # a new train file
    grown = _open(copy, "valid", seed=3).ids
    assert set(valid) <= set(grown) and set(grown) - set(valid) <= {"dog.1000"}
    assert set(_open(copy, "train", seed=3).ids) >= set(train_ids)
    assert _open(kaggle, "valid", seed=4).ids != valid


def test_default_valid_fraction_for_class_folders_without_valid(tmp_path):
    rng = np.random.default_rng(SEED)
    for label, cls in enumerate(("cats", "dogs")):
        for i in range(15):
            _jpeg(tmp_path / cls / f"{i}.jpg", label, rng)
    train_src, valid_src = _open(tmp_path, "train"), _open(tmp_path, "valid")
    assert train_src.num_examples + valid_src.num_examples == 30 and valid_src.num_examples >= 1
    assert "holding out 10% of train (`valid_fraction=0.1`, seed 0)" in valid_src.describe()
    assert _open(tmp_path, "valid", valid_fraction=0.5).num_examples > valid_src.num_examples
    assert data.open_source(tmp_path, "train").num_examples == 30  # the library's default: the whole folder


def test_bad_inputs_get_one_line(tmp_path):
    one = write_kaggle(tmp_path / "one", per_class=3, test=0)
    for f in (one / "train").glob("dog.*"):
        f.unlink()
    msg = _one_line(one, "train")
    assert msg.startswith(f"{one / 'train'}: file names give one label (cat); need at least 2"), msg

    mixed = write_kaggle(tmp_path / "mixed", per_class=3, test=0)
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _jpeg(mixed / "train" / name, 0, np.random.default_rng(SEED))
    msg = _one_line(mixed, "train")
    assert "4 of 10 images are not named <label>.<id>.<ext> (a.jpg, b.jpg, c.jpg, +1 more)" in msg, msg

    regex = write_kaggle(tmp_path / "regex", per_class=3, test=0)
    msg = _one_line(regex, "train", labels_from_filename=r"^(cat)\.")
    assert "`labels_from_filename='^(cat)\\\\.'` does not match 3 of 6 images (dog.0.jpg, dog.1.jpg, dog.2.jpg)" in msg
    assert "not a regular expression" in _one_line(regex, "train", labels_from_filename="(cat")
    assert "has no group" in _one_line(regex, "train", labels_from_filename="cat")
    assert "gives one label (jpg)" in _one_line(regex, "train", labels_from_filename=r"(jpg)$")

    classes = tmp_path / "classes"
    for label, cls in enumerate(("cats", "dogs")):
        _jpeg(classes / "train" / cls / "1.jpg", label, np.random.default_rng(SEED))
    assert "no images directly inside" in _one_line(classes, "train", labels_from_filename="(c)")
    _jpeg(classes / "train" / "loose.jpg", 0, np.random.default_rng(SEED))  # class folders win, as before
    assert _open(classes, "train", valid_fraction=0.5).class_names == ["cats", "dogs"]
    assert "image folders only" in _one_line("tfds:cats_vs_dogs", "train", labels_from_filename="(c)")


@pytest.mark.parametrize(
    ("pattern", "expect"),
    [("(cat", "must be a regular expression"), ("cat", "needs a group around the label")],
)
def test_config_refuses_bad_patterns(tmp_path, capsys, pattern, expect):
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--labels-from-filename", pattern]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vgg-jax: error: --labels-from-filename ") and expect in err, err
