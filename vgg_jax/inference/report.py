"""`vgg-jax evaluate`'s report folder: metrics (pure numpy), report.json, misclassified.csv and two PNGs drawn
with Pillow alone (confusion_matrix.png, top_losses.png, after fast.ai's plot_top_losses)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vgg_jax.data.source import printable
from vgg_jax.fileio import atomic_path

FILES = ("report.json", "confusion_matrix.png", "top_losses.png", "misclassified.csv")
TILE = 160  # top_losses.png: side of an image tile, px
COLUMNS = 4  # top_losses.png: tiles per row at most
CAPTION = 54  # top_losses.png: caption band under a tile (three lines)
PAD = 10  # space around tiles and around the confusion matrix
LABEL_W = 150  # confusion_matrix.png: band left of the grid for the true class names
LABEL_H = 56  # confusion_matrix.png: band above the grid for the axis title and predicted class names
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
WRONG = (190, 30, 30)


# -- metrics ---------------------------------------------------------------------------------------------


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [K, K] counts: rows are true classes, columns predicted classes."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return confusion


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """float64 [K] precision, recall, f1 and int64 [K] support per class; 0/0 gives 0.0 (as scikit-learn)."""
    confusion = np.asarray(confusion, np.int64)
    hits = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def average_ranks(values: np.ndarray) -> np.ndarray:
    """float64 [N] 1-based ranks of `values`, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first occurrence
    return (first + (counts + 1) / 2.0)[inverse.reshape(-1)]


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve: P(score of a random positive > that of a random negative), ties counting 1/2
    (the Mann-Whitney U statistic over n_pos * n_neg); None when either class is absent."""
    positive = np.asarray(is_positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(np.asarray(scores, np.float64))
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def example_losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float64 [N] cross-entropy -log p(true class), with p clipped at 1e-7 as Keras does."""
    p_true = np.asarray(probs, np.float64)[np.arange(len(labels)), np.asarray(labels, np.int64)]
    return -np.log(np.clip(p_true, 1e-7, 1.0))


def worst_first(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row indices of the misclassified examples (argmax != label), highest loss first (row order for ties)."""
    wrong = np.flatnonzero(np.asarray(probs).argmax(-1) != np.asarray(labels))
    losses = example_losses(probs[wrong], labels[wrong])
    return wrong[np.argsort(-losses, kind="stable")]


def metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """report.json's metrics block from per-example probabilities [N, K] and labels [N]."""
    labels = np.asarray(labels, np.int64)
    confusion = confusion_matrix(labels, np.asarray(probs).argmax(-1), len(classes))
    table = per_class(confusion)
    out: dict[str, Any] = {
        "per_class": {
            name: {"precision": float(table["precision"][k]), "recall": float(table["recall"][k]),
                   "f1": float(table["f1"][k]), "support": int(table["support"][k])}
            for k, name in enumerate(classes)
        },
        "confusion_matrix": {"rows": "true", "columns": "predicted", "classes": list(classes),
                             "counts": confusion.tolist()},
        "misclassified": int(confusion.sum() - np.trace(confusion)),
    }  # fmt: skip
    if len(classes) == 2:
        out["roc_auc"] = roc_auc(labels == 1, np.asarray(probs)[:, 1])
        out["roc_auc_score"] = f"P({classes[1]})"
    return out


# -- files -----------------------------------------------------------------------------------------------


def number(value: float) -> str:
    """A float32 probability as the shortest text that reads back to the same float32 (9 significant digits)."""
    return f"{float(value):.9g}"


def write_json(path: Path, report: dict) -> None:
    """report.json: strict JSON (a non-finite number becomes null), indented."""
    clean = json.loads(json.dumps(report), parse_constant=lambda _: None)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")


def write_misclassified(
    path: Path, rows: np.ndarray, paths: Sequence[str], probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> None:
    """misclassified.csv: path, true class, predicted class and every class's probability, one row per `rows`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "predicted", *classes])
        for i in rows:
            p = probs[i]
            writer.writerow([printable(paths[i]), classes[labels[i]], classes[int(p.argmax())], *map(number, p)])


def write_png(path: Path, image: Image.Image) -> None:
    """A Pillow image as a PNG file, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# -- pictures --------------------------------------------------------------------------------------------


def font(size: int = 13) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at `size` px."""
    return ImageFont.load_default(size=size)


def fit(text: str, width: float, face: Any) -> str:
    """`text`, cut and ended with '...' where it is wider than `width` px."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def cell_size(num_classes: int) -> int:
    """confusion_matrix.png: side of one cell, px (80 for up to 8 classes, smaller beyond, at least 16)."""
    return max(16, min(80, 640 // max(num_classes, 1)))


def confusion_png(confusion: np.ndarray, classes: Sequence[str]) -> Image.Image:
    """Counts in a K x K grid shaded by count (rows: true class, columns: predicted), class names on both axes.

    Size: (LABEL_W + K * cell + PAD) x (LABEL_H + K * cell + PAD) with cell = cell_size(K)."""
    k, cell = len(classes), cell_size(len(classes))
    image = Image.new("RGB", (LABEL_W + k * cell + PAD, LABEL_H + k * cell + PAD), BACKGROUND)
    draw, small, big = ImageDraw.Draw(image), font(12), font(14)
    draw.text((LABEL_W + k * cell / 2, 4), "predicted (columns)", fill=INK, font=big, anchor="ma")
    draw.text((4, LABEL_H - 4), "true (rows)", fill=INK, font=small, anchor="ld")
    peak = max(int(confusion.max()), 1)
    for j, name in enumerate(classes):
        x = LABEL_W + j * cell + cell / 2
        draw.text((x, LABEL_H - 4), fit(name, cell - 2, small), fill=INK, font=small, anchor="md")
    for i, name in enumerate(classes):
        y = LABEL_H + i * cell
        draw.text((LABEL_W - 6, y + cell / 2), fit(name, LABEL_W - 10, small), fill=INK, font=small, anchor="rm")
        for j in range(k):
            x, share = LABEL_W + j * cell, confusion[i, j] / peak
            shade = tuple(round(255 - share * (255 - c)) for c in ((40, 90, 160) if i == j else WRONG))
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=shade, outline=(200, 200, 200))
            if cell >= 28:
                ink = BACKGROUND if share > 0.55 else INK
                draw.text((x + cell / 2, y + cell / 2), str(confusion[i, j]), fill=ink, font=small, anchor="mm")
    return image


def top_losses_size(count: int) -> tuple[int, int]:
    """top_losses.png's (width, height) for `count` tiles: min(count, COLUMNS) columns (1 when none)."""
    columns = max(1, min(count, COLUMNS))
    rows = max(1, math.ceil(count / columns))
    return PAD + columns * (TILE + PAD), PAD + rows * (TILE + CAPTION + PAD)


def top_losses_png(tiles: Sequence[np.ndarray | None], captions: Sequence[Sequence[str]]) -> Image.Image:
    """A grid of uint8 [TILE, TILE, 3] tiles (None: no picture, or the file no longer decodes), each above its caption
    lines (the first in the ink of a wrong answer); "nothing misclassified" when there are none."""
    image = Image.new("RGB", top_losses_size(len(tiles)), BACKGROUND)
    draw, face = ImageDraw.Draw(image), font(13)
    if not tiles:
        draw.text((image.width / 2, image.height / 2), "nothing misclassified", fill=INK, font=face, anchor="mm")
        return image
    for n, (tile, lines) in enumerate(zip(tiles, captions)):
        x, y = PAD + (n % COLUMNS) * (TILE + PAD), PAD + (n // COLUMNS) * (TILE + CAPTION + PAD)
        if tile is None:
            draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), fill=(225, 225, 225))
            draw.text((x + TILE / 2, y + TILE / 2), "no picture", fill=INK, font=face, anchor="mm")
        else:
            image.paste(Image.fromarray(tile), (x, y))
        for line_no, text in enumerate(lines):
            colour = WRONG if line_no == 1 else INK
            draw.text((x, y + TILE + 3 + 17 * line_no), fit(text, TILE, face), fill=colour, font=face)
    return image


def captions(probs: np.ndarray, labels: np.ndarray, rows: np.ndarray, classes: Sequence[str]) -> list[list[str]]:
    """Per tile: "true: C", "pred: C", "prob 0.93  loss 2.65" (the predicted class's probability, the example's
    loss), as fast.ai's plot_top_losses."""
    losses = example_losses(probs[rows], labels[rows])
    out = []
    for i, loss in zip(rows, losses):
        k = int(probs[i].argmax())
        out.append([f"true: {classes[labels[i]]}", f"pred: {classes[k]}", f"prob {probs[i][k]:.2f}  loss {loss:.2f}"])
    return out


def tiles(paths: Sequence[str], load: Callable[[str], np.ndarray | None]) -> list[np.ndarray | None]:
    """`load(path)` for each path; None where it gives None or the file no longer decodes."""
    from vgg_jax.data.resize import DecodeError

    out: list[np.ndarray | None] = []
    for path in paths:
        try:
            out.append(load(path))
        except DecodeError:
            out.append(None)
    return out


def write(
    folder: Path,
    identity: dict[str, Any],
    probs: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    classes: Sequence[str],
    top_losses: int,
    load_tile: Callable[[str], np.ndarray | None],
) -> dict[str, Any]:
    """Writes FILES into `folder` (report.json last, so a whole one means a whole report); returns the report.

    `identity` (run, checkpoint, data, counts, accuracy, log loss) heads report.json; `paths` name the rows
    (file paths, or tfds record names); `load_tile(path)` gives a uint8 [TILE, TILE, 3] picture of a row, or
    None where there is no file to show."""
    report = {**identity, **metrics(probs, labels, classes)}
    wrong = worst_first(probs, labels)
    shown = wrong[:top_losses]
    write_png(folder / "confusion_matrix.png", confusion_png(np.asarray(report["confusion_matrix"]["counts"]), classes))
    pictures = tiles([paths[i] for i in shown], load_tile)
    write_png(folder / "top_losses.png", top_losses_png(pictures, captions(probs, labels, shown, classes)))
    write_misclassified(folder / "misclassified.csv", wrong, paths, probs, labels, classes)
    report["top_losses"] = {"shown": len(shown), "of": len(wrong), "tile": TILE}
    write_json(folder / "report.json", report)
    return report
