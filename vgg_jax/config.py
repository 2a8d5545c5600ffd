"""Training configuration: one frozen dataclass, defaults = the 2017 recipe (VGG16 ImageNet, fc1/fc2 kept,
everything frozen but a new 1-unit sigmoid head, Adam 1e-3, binary cross-entropy, one epoch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    data: str  # folder ROOT/{train,valid}/{class}/* or tfds:NAME[:SPLIT]
    out: str  # run folder
    weights: str | None = None  # params file, Keras file, "imagenet", or None/"random" for a random backbone
    arch: str = "vgg16"
    widths: tuple[int, ...] | None = None  # small variants (tests, quick checks); None = VGG's 64..512
    fc_units: int | None = None  # None = 4096
    top: str = "fc"  # "fc" keeps fc1/fc2 (recipe); "avg"/"max" pool block5 instead
    image_size: int = 224
    resize: str = "squash"
    epochs: int = 1
    batch_size: int = 32  # global: split over every device of every process
    eval_batch_size: int | None = None  # None = batch_size
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    schedule: str = "constant"  # or "cosine" (with warmup_steps)
    warmup_steps: int = 0
    clip_norm: float | None = None
    freeze_through: str = "fc2"
    lr_mult: str | None = None  # e.g. "conv=0.1,fc=0.5"
    dropout: float = 0.5
    augment: bool = False
    seed: int = 0
    valid_fraction: float | None = None
    tfds_manual_dir: str | None = None  # where tfds finds manually downloaded archives
    cache_features: bool | None = None  # None = on when only the head trains and augment is off
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = epoch ends only
    keep_checkpoints: int = 3
    dtype: str = "float32"  # or "bfloat16" (params stay float32)
    shard_fc: bool = False  # split fc1/fc2 kernels (and their Adam moments) across devices
    log_every: int = 10

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in fields}
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Fields that may differ when resuming or evaluating a run: where things are, not what is trained.
RUN_LOCAL_FIELDS = frozenset(
    {"out", "data", "weights", "eval_batch_size", "log_every", "keep_checkpoints", "checkpoint_every"}
)
