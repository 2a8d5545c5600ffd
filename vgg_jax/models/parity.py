"""Self-check of a conversion's transforms: our Flax model (float32) against a float64 numpy forward over the
source file's arrays as read, in the conventions the converter took for it (kernel convention, fc1 row order).

It checks that the transforms (layout change, 180-degree flip, fc1 row reorder) were applied right for those
conventions. It cannot check the conventions themselves, nor the layer mapping: both come from the
converter's own reading of the file. Parity with Keras itself is what tests/test_parity_keras.py checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from vgg_jax.convert import mapping
from vgg_jax.convert.source import open_source
from vgg_jax.models import arch

TOLERANCE = 1e-4
HEADLINE = (
    "Flax float32 vs a float64 numpy forward over the source as read, in the conventions above; "
    "it checks the transforms, not the layer mapping or the conventions"
)


@dataclass
class ParityRow:
    output: str
    shape: tuple[int, ...]
    rel_error: float

    @property
    def ok(self) -> bool:
        return self.rel_error <= TOLERANCE


def rel_error(got, want) -> float:
    """max |got - want| / max |want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def check(
    source_path: str | os.PathLike,
    params: dict,
    images: np.ndarray,
    kernels: str | None = None,
    fc1_order: str | None = None,
    image_size: int | None = None,
    pooling: str | None = None,
) -> list[ParityRow]:
    """Logits (if the file has a top) and block5_pool features of `images` (uint8 [N, S, S, 3], S the size the
    conversion took: 224 for ImageNet files); `image_size` and `pooling` as given to the conversion."""
    import jax

    from vgg_jax.convert import reference
    from vgg_jax.models.preprocess import preprocess_input
    from vgg_jax.models.vgg import VGG

    with open_source(source_path) as source:
        choices = mapping.Choices(kernels=kernels, fc1_order=fc1_order, image_size=image_size, pooling=pooling)
        p = mapping.plan(source, choices)
        raw = [(layer.read(0), layer.read(1)) for _, layer in p.mapping]
    depths = arch.DEPTHS[p.arch]
    n_conv = sum(depths)
    convs, denses = raw[:n_conv], raw[n_conv:]
    rows = []
    features = VGG(depths=depths, include_top=False)
    got = jax.jit(lambda prm, x: features.apply({"params": prm}, preprocess_input(x)))(params, images)
    want = reference.forward(convs, [], depths, images, p.layout, p.kernels.value == "theano")
    rows.append(ParityRow("block5_pool features", tuple(got.shape), rel_error(got, want)))
    if p.finetuned:
        rows.append(_finetuned_logits(p, params, images, want, denses))
    elif p.include_top:
        model = VGG(depths=depths, classes=p.classes, classifier_activation=None)
        got = jax.jit(lambda prm, x: model.apply({"params": prm}, preprocess_input(x)))(params, images)
        rows.append(ParityRow("logits", tuple(got.shape), rel_error(got, reference.top(want, denses, p.fc1.value))))
    return rows


def _finetuned_logits(p: mapping.Plan, params: dict, images: np.ndarray, features: np.ndarray, denses) -> ParityRow:
    """A fine-tuned model's head logits: our Classifier against numpy over the source's top layers as read (a
    2-unit softmax head compared as z1 - z0, the logit of our one sigmoid unit)."""
    import jax

    from vgg_jax.convert import reference
    from vgg_jax.models.classifier import Classifier
    from vgg_jax.models.preprocess import preprocess_input

    fine = p.finetuned
    model = Classifier(depths=arch.DEPTHS[p.arch], top=fine.top, head_units=fine.head_units,
                       fc_units=fine.fc_units or arch.FC_UNITS)  # fmt: skip
    got = jax.jit(lambda prm, x: model.apply({"params": prm}, preprocess_input(x)))(params, images)
    if fine.top in ("avg", "max"):
        pooled = features.mean(axis=(1, 2)) if fine.top == "avg" else features.max(axis=(1, 2))
        kernel, bias = denses[-1]
        want = pooled @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
    else:
        want = reference.top(features, denses, p.fc1.value)
    if fine.merges_softmax:
        want = want[:, 1:2] - want[:, 0:1]
    return ParityRow("head logits", tuple(got.shape), rel_error(got, want))


def format_rows(rows: list[ParityRow]) -> str:
    lines = [f"  {'output':<22} {'shape':<18} {'max rel error':>13}   tolerance {TOLERANCE:g}"]
    for r in rows:
        lines.append(f"  {r.output:<22} {list(r.shape)!s:<18} {r.rel_error:>13.2e}   {'ok' if r.ok else 'FAIL'}")
    return "\n".join(lines)
