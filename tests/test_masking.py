"""Padding rows (mask False) count for nothing: not in the train loss, accuracy or gradients, not in the eval
sums, whatever they hold. Batches are padded to a fixed size so nothing recompiles; these tests check the
padding is really inert, on images (through the network) and on cached fc1 features (dropout, frozen fc2, head)."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest

from tests.conftest import SMALL_NET
from tests.test_freeze import same_bits
from vgg_jax.models.classifier import Classifier, apply_fn, image_apply_fn
from vgg_jax.models.freeze import split
from vgg_jax.train.optim import make_optimizer
from vgg_jax.train.step import create_state, eval_step, train_step

SIZE, REAL, SEED = 32, 3, 0  # three real rows, then one padding row
CASES = [(kind, classes) for kind in ("image", "features") for classes in (2, 3)]  # sigmoid and softmax heads


class Setup:
    """A small classifier's jitted train and eval steps, as train() builds them for images or cached features."""

    def __init__(self, kind: str, classes: int):
        self.kind, self.classes = kind, classes
        model = Classifier(**SMALL_NET, head_units=1 if classes == 2 else classes)
        image = jax.numpy.zeros((1, SIZE, SIZE, 3))
        params = model.init({"params": jax.random.key(SEED)}, image)["params"]
        if kind == "image":  # block1/2 frozen, the rest trained: gradients flow back through convs, fc1/fc2 and head
            self.trainable, self.frozen = split(params, "block2")
            apply = image_apply_fn(model)
        else:  # what train() runs on the recipe's cached fc1 outputs: dropout, frozen fc2, dropout, the head
            self.trainable, self.frozen = {"head": params["head"]}, {"fc2": params["fc2"]}
            apply = apply_fn(model, "fc1")
        # SGD's first step is p - lr * g, so the updated params and the momentum trace are the gradients themselves.
        tx = make_optimizer(self.trainable, name="sgd", lr=0.1, momentum=0.9)
        self.state = create_state(self.trainable, tx, SEED)
        self.step = jax.jit(partial(train_step, apply_fn=apply, tx=tx))
        self.eval = jax.jit(partial(eval_step, apply_fn=apply))
        self.logits = jax.jit(lambda x: apply({**self.frozen, **self.trainable}, x, False, None))

    def real_rows(self) -> dict:
        """Three random rows (uint8 images or float features) with random labels, seeded."""
        rng = np.random.default_rng(SEED)
        if self.kind == "image":
            inputs = rng.integers(0, 256, (REAL, SIZE, SIZE, 3), dtype=np.uint8)
        else:
            inputs = rng.normal(0, 1, (REAL, SMALL_NET["fc_units"])).astype(np.float32)
        return {"inputs": inputs, "label": rng.integers(0, self.classes, REAL).astype(np.int32)}

    def benign(self) -> tuple[np.ndarray, int]:
        """What the data pipeline pads with: zeros, label 0."""
        shape = (SIZE, SIZE, 3) if self.kind == "image" else (SMALL_NET["fc_units"],)
        return np.zeros(shape, np.uint8 if self.kind == "image" else np.float32), 0

    def extreme(self) -> tuple[np.ndarray, int, int]:
        """All-255 pixels or features of 1e30, a label the model does not predict for them, and the one it does."""
        row = (
            np.full((SIZE, SIZE, 3), 255, np.uint8)
            if self.kind == "image"
            else np.full(SMALL_NET["fc_units"], 1e30, np.float32)
        )
        logits = np.asarray(self.logits(row[None]))[0]
        predicted = int(logits[0] > 0) if self.classes == 2 else int(np.argmax(logits))
        return row, (predicted + 1) % self.classes, predicted

    def run(self, batch: dict) -> dict:
        """One train step and one eval step on `batch`, fetched to the host."""
        state, metrics = self.step(self.state, self.frozen, batch)
        sums = self.eval(self.trainable, self.frozen, batch)
        return jax.device_get({"state": {"params": state.params, "opt_state": state.opt_state},
                               "loss": metrics["loss"], "accuracy": metrics["accuracy"], **sums})  # fmt: skip


def padded(real: dict, row: np.ndarray, label: int, mask: bool = False) -> dict:
    """The real rows plus one padding row (mask False unless `mask`)."""
    return {
        "inputs": np.concatenate([real["inputs"], row[None]]),
        "label": np.append(real["label"], label).astype(np.int32),
        "mask": np.array([True] * REAL + [mask]),
    }


def matches(a, b, close: bool = False) -> dict[str, bool]:
    """Per leaf path of two same-shaped pytrees: bitwise equal, or (close=True) equal up to float rounding."""
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    if close:
        # Rounding scaled to each leaf: the sums run over 3 or 4 rows in different orders.
        ok = lambda x, y: np.allclose(x, y, rtol=1e-5, atol=1e-6 * max(np.abs(x).max(), 1))
    else:
        ok = same_bits
    return {jax.tree_util.keystr(path): ok(x, y) for (path, x), y in zip(flat_a, flat_b)}


def differences(a, b, close: bool = False) -> list[str]:
    """Leaf paths where the two pytrees differ."""
    return [path for path, ok in matches(a, b, close).items() if not ok]


@pytest.fixture(scope="module", params=CASES, ids=[f"{k}-{c}classes" for k, c in CASES])
def setup(request) -> Setup:
    return Setup(*request.param)


def test_padding_content_and_label_change_nothing(setup):
    real = setup.real_rows()
    row, wrong, right = setup.extreme()
    benign = setup.run(padded(real, *setup.benign()))
    assert float(benign["count"]) == REAL, f"seed {SEED}: count {benign['count']}, want {REAL} real rows"
    benign["probs"] = benign["probs"][:REAL]  # the padding row's own probabilities are nobody's business
    for label in (wrong, right):  # a wrong label would add to a loss, a right one to `correct` and the accuracy
        extreme = setup.run(padded(real, row, label))
        extreme["probs"] = extreme["probs"][:REAL]
        changed = differences(benign, extreme)
        assert not changed, f"seed {SEED}, padding label {label}: the padding row changed {changed}"
    # The witness: the same row unmasked changes the loss, count, loss sum and every updated param (wrong label),
    # and the number correct (right label).
    counted = {label: setup.run(padded(real, row, label, mask=True)) for label in (wrong, right)}
    unmoved = [name for name in ("loss", "count", "loss_sum") if same_bits(benign[name], counted[wrong][name])]
    unmoved += [
        path for path, ok in matches(benign["state"]["params"], counted[wrong]["state"]["params"]).items() if ok
    ]
    unmoved += ["correct"] if same_bits(benign["correct"], counted[right]["correct"]) else []
    assert not unmoved, f"seed {SEED}: an unmasked extreme row left these unchanged: {unmoved}"


def test_padded_batch_equals_its_real_rows_alone(setup):
    """Means divide by the real rows, not the batch size: 3 real rows + 1 padding row = those 3 rows as a batch."""
    real = setup.real_rows()
    row, wrong, _ = setup.extreme()
    with_padding = setup.run(padded(real, row, wrong))
    alone = setup.run({**real, "mask": np.ones(REAL, bool)})
    assert same_bits(with_padding.pop("probs")[:REAL], alone.pop("probs")), f"seed {SEED}: real rows' probs differ"
    changed = differences(with_padding, alone, close=True)
    assert not changed, f"seed {SEED}: padded batch and real rows alone differ in {changed}"
