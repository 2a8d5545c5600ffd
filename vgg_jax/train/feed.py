"""What the steps eat: decoded image batches from the pipeline, or a cut's outputs from the feature cache
(the frozen layers below the cut run once, not every epoch).

Both give the same examples in the same order (`data.permutation`), so a cached run trains exactly as an
uncached one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import data
from vgg_jax.errors import UserError
from vgg_jax.log import say
from vgg_jax.models.classifier import Classifier, cut_shape
from vgg_jax.models.preprocess import preprocess_input
from vgg_jax.models.weights import Weights
from vgg_jax.train import features as feature_cache
from vgg_jax.train import parallel
from vgg_jax.train.config import TrainConfig
from vgg_jax.train.parallel import Topology
from vgg_jax.train.setup import Run


@dataclass(frozen=True)
class Feed:
    """Host batches for the steps: `epoch(epoch, start_batch)` for training, `valid()` for validation, both
    starting at stage `start` ("input": uint8 images; a cut such as "fc1": its cached outputs)."""

    start: str
    epoch: Callable[[int, int], Iterator[dict]]
    valid: Callable[[], Iterator[dict]]


def open_sources(cfg: TrainConfig) -> tuple[data.Source, data.Source]:
    """The train and valid splits of `cfg.data`, with the same class names or a one-line UserError."""
    options = {"valid_fraction": cfg.valid_fraction, "seed": cfg.seed, "manual_dir": cfg.tfds_manual_dir,
               "labels_from_filename": cfg.labels_from_filename,
               "valid_fraction_default": data.DEFAULT_VALID_FRACTION}  # fmt: skip
    train_src = data.open_source(cfg.data, "train", **options)
    valid_src = data.open_source(cfg.data, "valid", **options)
    if train_src.class_names != valid_src.class_names:
        raise UserError(
            f"{cfg.data}: train classes {train_src.class_names} differ from valid classes {valid_src.class_names}"
        )
    return train_src, valid_src


def cache_cut(cfg: TrainConfig, topo: Topology) -> str | None:
    """The cut whose cached outputs feed the steps, or None to train through the whole network."""
    cut = feature_cache.cut_for(cfg.top, cfg.freeze_through, cfg.dropout)
    if cfg.cache_features:
        if cut is None or cfg.augment:
            raise UserError("`cache_features` needs a frozen part (`freeze_through` other than none) and no `augment`")
        if topo.process_count > 1:
            raise UserError("`cache_features` works in single-process runs only; drop it for multi-host training")
        return cut
    if cfg.cache_features is None and cut is not None and not cfg.augment and topo.process_count == 1:
        if cut in feature_cache.DEFAULT_CUTS:
            return cut
        say(f"feature cache: off by default at {cut} (large, and little compute saved); `cache_features` turns it on")
    return None


def image_feed(cfg: TrainConfig, topo: Topology, train_src, valid_src, local_bs: int, local_eval_bs: int) -> Feed:
    """Decoded, resized uint8 images: this process's share of every global batch."""
    shared = {"image_size": cfg.image_size, "resize": cfg.resize, "interpolation": cfg.interpolation,
              "process_index": topo.process_index, "process_count": topo.process_count, "workers": None}  # fmt: skip

    def epoch(index: int, start: int) -> Iterator[dict]:
        for b in data.train_batches(train_src, local_bs, seed=cfg.seed, epoch=index, augment=cfg.augment,
                                    start_batch=start, **shared):  # fmt: skip
            yield {"inputs": b["image"], "label": b["label"], "mask": b["mask"]}

    def valid() -> Iterator[dict]:
        for b in data.eval_batches(valid_src, local_eval_bs, **shared):
            yield {"inputs": b["image"], "label": b["label"], "mask": b["mask"], "id": b["id"]}

    return Feed("input", epoch, valid)


def cached_feed(cfg: TrainConfig, run: Run, weights: Weights, train_src, valid_src, batch_size: int, cut: str) -> Feed:
    """The cut's outputs, from the cache (computed once through `run`'s frozen layers when missing); then the
    run keeps only the frozen layers above the cut, the only ones a step from the cut runs."""
    cached = cached_features(cfg, run, weights, {"train": train_src, "valid": valid_src}, batch_size, cut)
    run.keep_frozen(above(run.model, set(run.frozen), cut))

    def epoch(index: int, start: int) -> Iterator[dict]:
        steps = data.steps_per_epoch(train_src, cfg.batch_size)
        order = data.permutation(train_src.num_examples, cfg.seed, index)[: steps * cfg.batch_size]
        for i in range(start, steps):
            yield feature_cache.gather(cached["train"], order[i * cfg.batch_size : (i + 1) * cfg.batch_size])

    return Feed(cut, epoch, lambda: _padded_batches(cached["valid"], batch_size))


def above(model: Classifier, layers: set[str], cut: str) -> set[str]:
    """The layers that run above `cut` (fc2 for the recipe's fc1 cut; none for a blockN_pool cut)."""
    stages = model.stages()
    return {k for k in layers if stages.index(model.stage_of(k)) > stages.index(cut)}


def _padded_batches(cached: feature_cache.Features, batch_size: int) -> Iterator[dict]:
    """Every cached example once, in order; the last batch padded with masked zeros."""
    count = len(cached.labels)
    for i in range(0, count, batch_size):
        batch = feature_cache.gather(cached, np.arange(i, min(i + batch_size, count)))
        pad = batch_size - len(batch["label"])
        yield {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) if pad else v for k, v in batch.items()}


def cached_features(cfg: TrainConfig, run: Run, weights: Weights, sources: dict, batch_size: int, cut: str) -> dict:
    """The cut's outputs per split: from the cache when their key matches, else computed once and stored."""
    shape = cut_shape(run.model, cut, cfg.image_size)
    fields = {name: _cache_fields(cfg, weights, source, cut) for name, source in sources.items()}
    out, missing = {}, []
    for name, source in sources.items():
        found = feature_cache.load(fields[name], name, source.num_examples, say=say)
        if found is not None:
            say(f"feature cache: {name} {cut} features from {feature_cache.features_dir(fields[name])}")
            out[name] = found
        else:
            missing.append(name)
    if not missing:
        return out
    needed = sum(feature_cache.nbytes(sources[s].num_examples, shape, cfg.cache_dtype) for s in missing)
    what = " + ".join(f"{s} {sources[s].num_examples:,}" for s in missing)
    per_image = feature_cache.nbytes(1, shape, cfg.cache_dtype)
    layout = "x".join(map(str, shape))
    say(feature_cache.check_space(feature_cache.features_dir(fields[missing[0]]).parent, needed,
                                  f"{cut} outputs of {layout} {cfg.cache_dtype} ({per_image:,} bytes per image) "
                                  f"for {what} images"))  # fmt: skip
    below = _below_fn(run.model, cut, cfg.cache_dtype)
    for name in missing:
        source, t0 = sources[name], time.perf_counter()
        batches = data.eval_batches(source, batch_size, image_size=cfg.image_size, resize=cfg.resize,
                                    interpolation=cfg.interpolation, workers=None)  # fmt: skip
        out[name] = feature_cache.compute(fields[name], name, batches, lambda x: below(run.frozen, x),
                                          source.num_examples, shape, cfg.cache_dtype)  # fmt: skip
        seconds = time.perf_counter() - t0
        say(f"feature cache: {name} backbone pass over {source.num_examples} images in {seconds:.1f} s")
    return out


def _below_fn(model: Classifier, cut: str, cache_dtype: str):
    """Jitted: uint8 images -> the cut's output, in the cache's storage dtype."""
    store = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cache_dtype]
    return jax.jit(
        lambda p, x: model.apply({"params": p}, preprocess_input(x, model.dtype), stop=cut).astype(store),
        **parallel.jit_options(),
    )


def _cache_fields(cfg: TrainConfig, weights: Weights, source, cut: str) -> dict:
    """Everything the cut's outputs depend on; the data by the files' contents, not their names or times."""
    import flax

    if weights.sha256 is not None:
        weights_key = weights.sha256
    else:  # a random backbone is a pure function of the seed, the network and the library versions
        weights_key = f"random-init seed {cfg.seed} top {cfg.top} flax {flax.__version__} jax {jax.__version__}"
    data_key = source.fingerprint if source.tfds is not None else feature_cache.contents_digest(source.paths, say=say)
    return {
        "weights": weights_key, "data": data_key, "image_size": cfg.image_size, "resize": cfg.resize,
        "interpolation": cfg.interpolation, "preprocessing": feature_cache.PREPROCESSING, "arch": cfg.arch,
        "widths": cfg.widths, "fc_units": cfg.fc_units if cut in ("fc1", "fc2") else None, "cut": cut,
        "dtype": cfg.dtype, "cache_dtype": cfg.cache_dtype,
    }  # fmt: skip
