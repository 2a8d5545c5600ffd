"""`build_run`: the one setup shared by train, evaluate, the Predictor and the benchmark.

model -> params (weights file or given) -> split trainable/frozen -> [optimizer -> state] -> shardings -> on
the mesh. Inference builds no optimizer: a restore then reads the trained params only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import optax

from vgg_jax.models.classifier import Classifier, apply_fn
from vgg_jax.models.freeze import parse_lr_mults, split
from vgg_jax.models.weights import Weights
from vgg_jax.train import parallel
from vgg_jax.train.config import TrainConfig
from vgg_jax.train.network import build_model, init_params
from vgg_jax.train.optim import make_optimizer
from vgg_jax.train.step import TrainState, create_state, eval_step, train_step


@dataclass
class Run:
    """A network ready to step or score on `mesh`: its frozen params and either the trainable params
    (inference) or a TrainState holding them with the optimizer's state (training), each with its shardings."""

    cfg: TrainConfig
    model: Classifier
    mesh: Any
    frozen: dict
    frozen_sh: Any
    params: dict | None = None  # inference: the trainable params, on the mesh
    params_sh: Any = None
    tx: optax.GradientTransformation | None = None  # training only
    state: TrainState | None = None
    state_sh: Any = None

    def step_fn(self, start: str = "input", tuned: bool = True):
        """The jitted train step from stage `start` (the state donated, the frozen params not)."""
        step = partial(train_step, apply_fn=apply_fn(self.model, start), tx=self.tx)
        return parallel.jit_step(step, self.state_sh, self.frozen_sh, self.mesh, tuned=tuned)

    def eval_fn(self, start: str = "input", tuned: bool = True):
        """The jitted eval step from stage `start`: sums replicated, per-example probabilities split."""
        trainable_sh = self.state_sh.params if self.state_sh is not None else self.params_sh
        step = partial(eval_step, apply_fn=apply_fn(self.model, start))
        return parallel.jit_eval(step, trainable_sh, self.frozen_sh, self.mesh, tuned=tuned)

    def keep_frozen(self, names: set[str]) -> None:
        """Keeps only the frozen layers in `names` (those a step from a cached cut still runs)."""
        self.frozen = {k: v for k, v in self.frozen.items() if k in names}
        self.frozen_sh = parallel.shardings_for(self.frozen, self.mesh, self.cfg.shard_fc)


def optimizer_for(cfg: TrainConfig, total_steps: int) -> Callable[[dict], optax.GradientTransformation]:
    """The optimizer `cfg` describes, for trainable params given later (its masks follow their tree)."""
    return lambda trainable: make_optimizer(
        trainable, name=cfg.optimizer, lr=cfg.lr, total_steps=total_steps, warmup_steps=cfg.warmup_steps,
        cosine=cfg.schedule == "cosine", momentum=cfg.momentum, clip_norm=cfg.clip_norm,
        lr_mults=parse_lr_mults(cfg.lr_mult),
    )  # fmt: skip


def build_run(
    cfg: TrainConfig,
    mesh: Any,
    num_classes: int,
    weights: Weights | None = None,
    *,
    class_names: Sequence[str] | None = None,
    params: dict | None = None,
    optimizer: Callable[[dict], optax.GradientTransformation] | None = None,
) -> Run:
    """The network `cfg` describes on `mesh`, with params from `weights` (or `params` as given), split by
    `cfg.freeze_through`. With `optimizer` (e.g. `optimizer_for(cfg, total_steps)`) a TrainState is built
    for training; without, the trainable params alone, for inference.

    `class_names` (the data's; only the trainer has them) let init_params say where the head starts from."""
    model = build_model(cfg, num_classes)
    if params is None:
        params = init_params(model, cfg, weights or Weights(None, None), class_names)
    trainable, frozen = split(params, cfg.freeze_through)
    del params
    frozen_sh = parallel.shardings_for(frozen, mesh, cfg.shard_fc)
    run = Run(cfg, model, mesh, parallel.put(frozen, frozen_sh), frozen_sh)
    if optimizer is None:
        run.params_sh = parallel.shardings_for(trainable, mesh, cfg.shard_fc)
        run.params = parallel.put(trainable, run.params_sh)
        return run
    run.tx = optimizer(trainable)
    state = create_state(trainable, run.tx, cfg.seed)
    run.state_sh = parallel.shardings_for(state, mesh, cfg.shard_fc)
    run.state = parallel.put(state, run.state_sh)
    return run
