"""Freeze policies partition the params, per-group learning-rate multipliers parse strictly, and through the
trainer's own pieces the frozen params stay bit for bit as the weights file holds them, get no gradient and
cost no backward pass."""

from functools import partial
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from vgg_jax import UserError, data
from vgg_jax.models import params_io
from vgg_jax.models.classifier import image_apply_fn
from vgg_jax.train.config import TrainConfig
from vgg_jax.models.freeze import POLICIES, merge, parse_lr_mults, split
from vgg_jax.models.weights import resolve_weights
from vgg_jax.train.network import build_model, init_params
from vgg_jax.train.optim import make_optimizer
from vgg_jax.train.parallel import jit_options, jit_step, make_mesh, prefetch, put, shard_batch, shardings_for, to_host
from vgg_jax.models.preprocess import preprocess_input
from vgg_jax.train.step import create_state, dropout_keys, train_step
from vgg_jax.data.synthetic import write_folder

LAYERS = [f"block{b}_conv{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)] + [
    "fc1",
    "fc2",
    "head",
]
PARAMS = {name: {"kernel": i} for i, name in enumerate(LAYERS)}


@pytest.mark.parametrize(
    "policy, trainable",
    [
        ("fc2", {"head"}),
        ("fc1", {"fc2", "head"}),
        ("block5", {"fc1", "fc2", "head"}),
        ("block4", {"block5_conv1", "block5_conv2", "block5_conv3", "fc1", "fc2", "head"}),
        ("none", set(LAYERS)),
    ],
)
def test_policies(policy, trainable):
    t, f = split(PARAMS, policy)
    assert set(t) == trainable and set(t).isdisjoint(f) and set(t) | set(f) == set(LAYERS)
    assert merge(t, f) == PARAMS


def test_block1_leaves_block1_frozen_only():
    _, f = split(PARAMS, "block1")
    assert set(f) == {"block1_conv1", "block1_conv2"}


def test_fc_policies_on_a_top_without_fc_layers_freeze_everything_below_the_head():
    pooled = {k: v for k, v in PARAMS.items() if k not in ("fc1", "fc2")}  # top="avg": no fc layers
    mlp = {**pooled, "mlp1": PARAMS["fc1"], "mlp2": PARAMS["fc2"]}  # top="mlp:..": new layers train with the head
    for policy in ("fc1", "fc2"):
        assert set(split(pooled, policy)[0]) == {"head"}
        assert set(split(mlp, policy)[0]) == {"head", "mlp1", "mlp2"}


def test_policy_matching_nothing_is_an_error():
    no_block5 = {k: v for k, v in PARAMS.items() if not k.startswith("block5")}
    with pytest.raises(UserError, match="`freeze_through=block5` matches no parameter"):
        split(no_block5, "block5")
    with pytest.raises(UserError, match="must be one of"):
        split(PARAMS, "block9")


def test_nothing_trainable_is_an_error():
    with pytest.raises(UserError, match="leaves nothing trainable"):
        split({k: v for k, v in PARAMS.items() if k != "head"}, "fc2")


def test_lr_mults():
    assert parse_lr_mults("conv=0.1,fc=0.5,block5=1") == {
        **{f"block{i}": 0.1 for i in range(1, 5)},
        "block5": 1.0,
        "fc1": 0.5,
        "fc2": 0.5,
    }
    assert parse_lr_mults(None) == {}
    for bad in ("conv", "conv=x", "conv=0", "layer9=2"):
        with pytest.raises(UserError):
            parse_lr_mults(bad)


# ---- The freeze through the real trainer pieces, as vgg_jax.train.trainer.train() wires them ----

SMALL = {"arch": "vgg11", "widths": (8, 8, 16, 16, 16), "fc_units": 32, "image_size": 32, "batch_size": 8, "lr": 1e-2}
# vgg11's layers in order, and, per policy, the first one left trainable: written out here, not derived from split.
VGG11 = ["block1_conv1", "block2_conv1", "block3_conv1", "block3_conv2", "block4_conv1", "block4_conv2",
         "block5_conv1", "block5_conv2", "fc1", "fc2", "head"]  # fmt: skip
FIRST_TRAINABLE = {"fc2": "head", "fc1": "fc2", "block5": "fc1", "block4": "block5_conv1", "block3": "block4_conv1",
                   "block2": "block3_conv1", "block1": "block2_conv1", "none": "block1_conv1"}  # fmt: skip
SEED = 0


@pytest.fixture(scope="module")
def weights_file(small_weights_file):
    """conftest's small vgg11 params file (random, seed 7)."""
    return small_weights_file


@pytest.fixture(scope="module")
def host_batches(tmp_path_factory):
    """Two epochs of real decoded JPEG batches (16 images, batch 8: 4 steps), renamed as train() renames them."""
    folder = write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=8, valid=0, test=0, seed=SEED)
    source = data.open_source(folder, "train")
    return [
        {"inputs": b["image"], "label": b["label"], "mask": b["mask"]}
        for epoch in range(2)
        for b in data.train_batches(source, 8, image_size=SMALL["image_size"], seed=SEED, epoch=epoch)
    ]


def spy(tx: optax.GradientTransformation, seen: list) -> optax.GradientTransformation:
    """tx unchanged, except that each trace of its update records the leaf paths of the gradients it is given."""

    def update(updates, state, params=None):
        seen.append(sorted(params_io.flatten(updates)))
        return tx.update(updates, state, params)

    return optax.GradientTransformation(tx.init, update)


def trainer(policy: str, weights: Path, seen: list) -> tuple:
    """The pieces of vgg_jax.train.trainer.train() for images (no feature cache), on one mesh over this host's devices."""
    cfg = TrainConfig(data="unused", out="unused", weights=str(weights), freeze_through=policy, seed=SEED, **SMALL)
    probe = build_model(cfg, 2)
    trainable, frozen = split(init_params(probe, cfg, resolve_weights(cfg.weights)), cfg.freeze_through)
    model = probe
    tx = spy(make_optimizer(trainable, lr=cfg.lr, total_steps=4), seen)
    mesh = make_mesh()
    state = create_state(trainable, tx, cfg.seed)
    state_sh = shardings_for(state, mesh)
    state = put(state, state_sh)
    frozen = put(frozen, shardings_for(frozen, mesh))
    step_fn = jit_step(partial(train_step, apply_fn=image_apply_fn(model), tx=tx), state_sh,
                       shardings_for(frozen, mesh), mesh)  # fmt: skip
    return model, mesh, state, frozen, step_fn


def same_bits(a, b) -> bool:
    """Same dtype, shape and bytes."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("policy", POLICIES)
def test_trainer_steps_leave_frozen_params_as_in_the_weights_file(policy, weights_file, host_batches):
    assert set(FIRST_TRAINABLE) == set(POLICIES), "a policy this test does not know"
    seen: list = []
    _, mesh, state, frozen, step_fn = trainer(policy, weights_file, seen)
    start = to_host(state.params)
    batches = list(prefetch(host_batches, mesh))
    # Donation as compiled: the state is given up to the step, the frozen params never are. (A donated buffer
    # that no output can reuse is not deleted, so reading the arrays back afterwards would not show it.)
    state_donated, frozen_donated = jax.tree.map(
        lambda info: info.donated, step_fn.lower(state, frozen, batches[0]).args_info[0][:2]
    )
    assert all(jax.tree.leaves(state_donated)), f"{policy}: the step does not reuse the state's buffers"
    given = [path for path, donated in params_io.flatten(frozen_donated).items() if donated]
    assert not given, f"{policy}: frozen params donated to the step: {given}"
    for batch in batches:
        state, metrics = step_fn(state, frozen, batch)  # `frozen`: the very arrays read back below
        assert bool(metrics["finite"]), f"{policy}, seed {SEED}: non-finite loss"

    on_file = params_io.load(weights_file)
    trained = merge(to_host(state.params), to_host(frozen))
    want_trainable = VGG11[VGG11.index(FIRST_TRAINABLE[policy]) :]
    assert sorted(trained) == sorted(VGG11), f"{policy}: the trainer holds {sorted(trained)}"
    assert sorted(state.params) == sorted(want_trainable), f"{policy}: trains {sorted(state.params)}"
    for layer in (name for name in VGG11 if name not in want_trainable):
        for kind in ("kernel", "bias"):
            assert same_bits(trained[layer][kind], on_file[layer][kind]), f"{policy}: frozen {layer}/{kind} changed"
    now, before = params_io.flatten(to_host(state.params)), params_io.flatten(start)
    unmoved = [path for path in now if same_bits(now[path], before[path])]
    assert not unmoved, f"{policy}, seed {SEED}: trainable params that did not move: {unmoved}"
    for path, value in params_io.flatten({k: v for k, v in start.items() if k != "head"}).items():
        assert same_bits(value, params_io.flatten(on_file)[path]), f"{policy}: trainable {path} did not start as loaded"

    want_paths = sorted(params_io.flatten({k: trained[k] for k in want_trainable}))
    wrong = [sorted(set(paths) ^ set(want_paths)) for paths in seen if paths != want_paths]
    assert seen and not wrong, f"{policy}: gradients missing or beyond the trainable params: {wrong}"


def flops(compiled) -> float:
    """XLA's FLOP count for a compiled function."""
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.mark.parametrize("policy, cheapest, dearest", [("fc2", 0.999, 1.001), ("fc1", 1.001, 1.1)])
def test_recipe_trainer_step_costs_one_forward(policy, cheapest, dearest, weights_file, host_batches):
    """XLA's count for the compiled trainer step over the compiled training-mode forward (dropout after fc1 and fc2
    included, as the recipe runs it): within 0.1% for the recipe (head only;
    its gradient and Adam are ~1e3 FLOPs against ~1e7), and measurably more once fc2 trains too (the witness)."""
    model, mesh, state, frozen, step_fn = trainer(policy, weights_file, [])
    batch = shard_batch(host_batches[0], mesh)
    forward = jax.jit(lambda p, x, k: model.apply({"params": p}, preprocess_input(x, model.dtype), train=True,
                                                  dropout_keys=dropout_keys(k, 0, x.shape[0])), **jit_options())  # fmt: skip
    ratio = flops(step_fn.lower(state, frozen, batch).compile()) / flops(
        forward.lower(merge(state.params, frozen), batch["inputs"], state.rng).compile()
    )
    print(f"{policy}: trainer step / forward = {ratio:.5f} x the FLOPs")
    assert cheapest <= ratio <= dearest, f"{policy}: the step costs {ratio:.5f}x the forward"
