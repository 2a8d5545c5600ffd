"""`vgg-jax evaluate`'s report folder (report.json, confusion_matrix.png, top_losses.png, misclassified.csv) and
`predict --format full`, on a small trained run whose valid split holds one image twice, once in each class: a
guaranteed mistake and a guaranteed tie between a positive and a negative score for the AUC.

Every number in report.json is recomputed here from `predict --format full` over the same folder, with plain
Python loops and brute-force references written independently of vgg_jax.inference.report."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL
from tests.test_args import refused
from vgg_jax.inference import report
from vgg_jax.cli import main
from vgg_jax.train.config import TrainConfig
from vgg_jax.inference.evaluate import evaluate, predict
from vgg_jax.data.resize import decode_resize
from vgg_jax.data.synthetic import write_folder
from vgg_jax.train.trainer import train

pytestmark = pytest.mark.usefixtures("own_cache")  # conftest: a cache folder of this module's own

CLASSES = ["cats", "dogs"]
SHOWN = 2  # --top-losses of the first report: fewer than the mistakes (checked), so the grid is cut at SHOWN


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """write_folder (seed 3) plus valid/dogs/dog.twin.jpg, the same bytes as valid/cats/cat.0.jpg."""
    root = write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=12, valid=6, test=1, seed=3)
    shutil.copy(root / "valid" / "cats" / "cat.0.jpg", root / "valid" / "dogs" / "dog.twin.jpg")
    return root


@pytest.fixture(scope="module")
def run(small_weights_file, data, tmp_path_factory, cache):
    """One epoch of the recipe on `data` with the small VGG11 of conftest."""
    out = tmp_path_factory.mktemp("runs") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(cache))
        train(TrainConfig(data=str(data), out=str(out), weights=str(small_weights_file), epochs=6, **SMALL))
    return out


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory, cache):
    """(report folder, evaluate's result) of `evaluate --top-losses SHOWN` on the valid split."""
    folder = tmp_path_factory.mktemp("report") / "eval"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(cache))
        return folder, evaluate(run, report_dir=folder, top_losses=SHOWN)


@pytest.fixture(scope="module")
def full(run, data, tmp_path_factory, cache):
    """`predict --format full` over valid/ (same batch size, same order as evaluate): rows as dicts."""
    out = tmp_path_factory.mktemp("full") / "full.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(cache))
        predict(run, str(data / "valid"), str(out), fmt="full")
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truth(row: dict) -> str:
    """The true class of a full-format row: the name of the class folder its file lies in."""
    return Path(row["path"]).parent.name


def pairwise_auc(pos: list[float], neg: list[float]) -> float:
    """Brute force: the share of (positive, negative) pairs ordered right, a tie counting 1/2."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_report_json_agrees_with_predictions(evaluated, full, run):
    folder, _ = evaluated
    got = json.loads((folder / "report.json").read_text())
    wrong = [r for r in full if r["predicted"] != truth(r)]
    assert 2 <= len(wrong) < len(full) - 2, f"seed 3 gave {len(wrong)} mistakes of {len(full)}: pick another seed"
    assert got["classes"] == CLASSES and got["split"] == "valid" and got["images"] == len(full) == 13
    assert got["unreadable"] == 0
    confusion = [[sum(truth(r) == t and r["predicted"] == p for r in full) for p in CLASSES] for t in CLASSES]
    assert got["confusion_matrix"]["counts"] == confusion
    assert got["confusion_matrix"]["classes"] == CLASSES and got["misclassified"] == len(wrong)
    assert got["accuracy"] == pytest.approx(1 - len(wrong) / len(full), abs=1e-6)
    for k, name in enumerate(CLASSES):
        hits = confusion[k][k]
        precision = hits / sum(row[k] for row in confusion) if sum(row[k] for row in confusion) else 0.0
        recall = hits / sum(confusion[k])
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        want = {"precision": precision, "recall": recall, "f1": f1, "support": sum(confusion[k])}
        assert got["per_class"][name] == pytest.approx(want, abs=1e-12), name
    log_loss = np.mean([-math.log(float(r[truth(r)])) for r in full])
    assert got["log_loss"] == pytest.approx(log_loss, abs=1e-5)
    # The AUC against pairs over the float32 scores as written (9 digits: they read back exactly), with the tie.
    score = {Path(r["path"]).name: float(r["dogs"]) for r in full}
    assert score["cat.0.jpg"] == score["dog.twin.jpg"], "the same bytes in both classes should score the same"
    pos = [float(r["dogs"]) for r in full if truth(r) == "dogs"]
    neg = [float(r["dogs"]) for r in full if truth(r) == "cats"]
    assert got["roc_auc"] == pytest.approx(pairwise_auc(pos, neg), abs=1e-12) and got["roc_auc_score"] == "P(dogs)"
    # Identity: the checkpoint training kept as best, and the scored files' contents in row order.
    best = json.loads((run / "run.json").read_text())["best_valid"]
    assert got["checkpoint_step"] == best["step"] and got["log_loss"] == pytest.approx(best["loss"], abs=1e-5)
    digests = b"".join(hashlib.sha256(Path(r["path"]).read_bytes()).digest() for r in full)
    assert got["data_fingerprint"] == hashlib.sha256(digests).hexdigest()


def test_misclassified_csv_is_the_wrong_predictions(evaluated, full):
    folder, _ = evaluated
    rows = read_csv(folder / "misclassified.csv")
    got = json.loads((folder / "report.json").read_text())
    off_diagonal = sum(
        v for t, row in enumerate(got["confusion_matrix"]["counts"]) for p, v in enumerate(row) if t != p
    )
    assert len(rows) == off_diagonal
    assert list(rows[0]) == ["path", "true", "predicted", *CLASSES]
    wrong = {r["path"]: r for r in full if r["predicted"] != truth(r)}
    assert {r["path"]: {k: r[k] for k in ("predicted", *CLASSES)} for r in rows} == {
        p: {k: r[k] for k in ("predicted", *CLASSES)} for p, r in wrong.items()
    }
    assert all(r["true"] == truth(r) for r in rows)
    p_true = [float(r[r["true"]]) for r in rows]  # highest loss first: lowest probability of the true class
    assert p_true == sorted(p_true)


def test_roc_auc_with_ties_equals_the_pair_count():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 40))
        labels = rng.integers(0, 2, n).astype(bool)
        labels[:2] = (True, False)  # both classes present
        scores = rng.integers(0, 4, n) / 4  # few distinct values: many ties
        want = pairwise_auc(scores[labels].tolist(), scores[~labels].tolist())
        assert report.roc_auc(labels, scores) == pytest.approx(want, abs=1e-12), f"seed {seed}"
    assert report.roc_auc(np.array([1, 0, 1, 0], bool), np.full(4, 0.3)) == 0.5  # all tied
    assert report.roc_auc(np.array([1, 1], bool), np.array([0.1, 0.9])) is None  # one class: undefined


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def test_confusion_png(evaluated):
    folder, _ = evaluated
    counts = np.array(json.loads((folder / "report.json").read_text())["confusion_matrix"]["counts"])
    image = pixels(folder / "confusion_matrix.png")
    cell = 80  # two classes: the largest cell
    assert image.shape == (report.LABEL_H + 2 * cell + report.PAD, report.LABEL_W + 2 * cell + report.PAD, 3)
    assert image.std() > 20, "blank picture"
    # A corner of every cell, clear of its text: the fuller the cell, the darker (shaded by count).
    darkness = {(i, j): 255 * 3 - int(image[report.LABEL_H + i * cell + 4, report.LABEL_W + j * cell + 4].sum())
                for i in range(2) for j in range(2)}  # fmt: skip
    fuller = sorted(darkness, key=lambda ij: counts[ij])
    assert darkness[fuller[-1]] > darkness[fuller[0]] or counts[fuller[-1]] == counts[fuller[0]]
    for ij, dark in darkness.items():
        assert (dark == 0) == (counts[ij] == 0), f"cell {ij}: count {counts[ij]}, darkness {dark}"


def grid_size(tiles: int) -> tuple[int, int]:
    """(height, width) of top_losses.png for `tiles` tiles, from the layout: up to 4 columns of 160 px tiles, each
    with a 54 px caption band, 10 px apart and from the edges."""
    columns = min(tiles, 4)
    rows = -(-tiles // columns)
    return 10 + rows * (160 + 54 + 10), 10 + columns * (160 + 10)


def tile_at(image: np.ndarray, n: int) -> np.ndarray:
    y, x = 10 + (n // 4) * (160 + 54 + 10), 10 + (n % 4) * (160 + 10)
    return image[y : y + 160, x : x + 160]


def check_top_losses(folder: Path, shown: int, resize: str = "squash") -> None:
    """top_losses.png holds `shown` tiles: the first rows of misclassified.csv, as the network saw them."""
    image = pixels(folder / "top_losses.png")
    assert image.shape[:2] == grid_size(shown) and image.std() > 20
    worst = read_csv(folder / "misclassified.csv")[:shown]
    for n, row in enumerate(worst):
        want = decode_resize(row["path"], 160, resize, "bilinear")
        np.testing.assert_array_equal(tile_at(image, n), want, err_msg=f"tile {n}: {row['path']}")
        caption = image[10 + 160 : 10 + 160 + 54, 10 + (n % 4) * 170 : 10 + (n % 4) * 170 + 160]
        assert (caption.min(axis=-1) < 128).any(), f"tile {n} has no caption"


def test_top_losses_png_shows_the_worst(evaluated):
    folder, _ = evaluated
    check_top_losses(folder, SHOWN)


def test_second_evaluate_replaces_the_report(evaluated, run, tmp_path, capsys):
    folder = tmp_path / "eval"
    shutil.copytree(evaluated[0], folder)
    before = {name: (folder / name).read_bytes() for name in report.FILES}
    assert main(["evaluate", str(run), "--report", str(folder), "--top-losses", "50"]) == 0
    out = capsys.readouterr().out
    assert sorted(os.listdir(folder)) == sorted(report.FILES), "temp files or strays left"
    wrong = len(read_csv(folder / "misclassified.csv"))
    check_top_losses(folder, wrong)  # fewer mistakes than 50: all of them
    assert (folder / "top_losses.png").read_bytes() != before["top_losses.png"]
    for name in ("misclassified.csv", "confusion_matrix.png"):  # same checkpoint, same data
        assert (folder / name).read_bytes() == before[name], name
    got, first = json.loads((folder / "report.json").read_text()), json.loads(before["report.json"])
    assert got.pop("top_losses") == {"shown": wrong, "of": wrong, "tile": 160}
    assert first.pop("top_losses") == {"shown": SHOWN, "of": wrong, "tile": 160} and got == first
    assert f"report: {folder} (" in out and f"checkpoint step {got['checkpoint_step']}" in out
    assert f"ROC AUC {got['roc_auc']:.4f}" in out
    for name, m in got["per_class"].items():
        assert any(line.split()[:5] == [name, *(f"{m[k]:.4f}" for k in ("precision", "recall", "f1")),
                   str(m["support"])] for line in out.splitlines()), f"no metrics line for {name}"  # fmt: skip


def test_predict_full_columns_and_kaggle_label(run, data, full, tmp_path):
    kaggle = read_csv(predict(run, str(data / "valid"), str(tmp_path / "kaggle.csv")))
    assert list(full[0]) == ["path", "predicted", *CLASSES] and len(full) == len(kaggle) == 13
    for f, k in zip(full, kaggle):
        assert Path(f["path"]).relative_to(data / "valid").with_suffix("").as_posix() == k["id"]
        probs = [float(f[c]) for c in CLASSES]
        assert f["predicted"] == CLASSES[int(np.argmax(probs))] and sum(probs) == pytest.approx(1, abs=1e-6)
        assert float(f["dogs"]) == pytest.approx(float(k["label"]), abs=5e-7), f["path"]  # 6 decimals vs 9 digits


def test_unknown_format_refused_before_loading(capsys, run, data, tmp_path):
    line, out = refused(capsys, ["predict", run, data / "test1", "--csv", tmp_path / "x.csv", "--format", "xml"])
    assert line == "vgg-jax: error: --format must be kaggle or full. Received: 'xml'"
    assert "checkpoint step" not in out and not (tmp_path / "x.csv").exists()


def test_unwritable_report_refused_before_loading(capsys, run, readonly_dir, tmp_path):
    target = readonly_dir / "eval"
    line, out = refused(capsys, ["evaluate", run, "--report", target])
    assert str(target) in line and "read-only file system" in line and "report" in line, line
    assert "checkpoint step" not in out and os.listdir(readonly_dir) == []
    (tmp_path / "file").write_text("x")
    line, out = refused(capsys, ["evaluate", run, "--report", tmp_path / "file"])
    assert line == f"vgg-jax: error: {tmp_path / 'file'}: exists and is not a folder; give --report a folder"
    assert "checkpoint step" not in out
    line, out = refused(capsys, ["evaluate", run, "--report", tmp_path / "r", "--top-losses", "0"])
    assert line == "vgg-jax: error: --top-losses must be an integer >= 1. Received: 0" and "checkpoint step" not in out


def test_unreadable_files_are_counted_only(run, data, evaluated, tmp_path, cache, monkeypatch):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "valid" / "cats" / "cat.empty.jpg").write_bytes(b"")  # skipped when listed
    good = (copy / "valid" / "dogs" / "dog.1.jpg").read_bytes()
    (copy / "valid" / "dogs" / "dog.cut.jpg").write_bytes(good[: len(good) // 2])  # truncated: skipped too
    result = evaluate(run, str(copy), report_dir=tmp_path / "eval", top_losses=SHOWN)
    got, first = result["report"], json.loads((evaluated[0] / "report.json").read_text())
    assert got["unreadable"] == 2 and got["images"] == first["images"] == 13
    assert got["confusion_matrix"] == first["confusion_matrix"] and got["roc_auc"] == first["roc_auc"]
    rows = read_csv(tmp_path / "eval" / "misclassified.csv")
    assert not any("empty" in r["path"] or "cut" in r["path"] for r in rows) and len(rows) == got["misclassified"]
