"""Training configuration: one frozen dataclass, defaults = the 2017 recipe (VGG16 ImageNet, fc1/fc2 kept,
everything frozen but a new 1-unit sigmoid head, Adam 1e-3, binary cross-entropy, one epoch)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import NoReturn

from vgg_jax.errors import UserError
from vgg_jax.models.arch import MIN_IMAGE_SIZE

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
CACHE_DTYPES = ("float32", "bfloat16")  # how cached features are stored
DTYPES = ("float32", "bfloat16")  # compute dtypes; params stay float32
MAX_SEED = 2**31 - 1  # numpy's SeedSequence refuses negative seeds; jax and tf.data take int32-sized ones


@dataclass(frozen=True)
class TrainConfig:
    data: str  # folder ROOT/{train,valid}/{class}/* or tfds:NAME[:SPLIT]
    out: str  # run folder
    weights: str | None = None  # params file, Keras file, "imagenet", or None/"random" for a random backbone
    arch: str = "vgg16"
    widths: tuple[int, ...] | None = None  # small variants (tests, quick checks); None = VGG's 64..512
    fc_units: int | None = None  # None = 4096
    top: str = "fc"  # "fc" keeps fc1/fc2 (recipe); "avg"/"max" pool block5; "mlp:256[,...]" new layers on it
    image_size: int = 224
    resize: str = "squash"
    interpolation: str = "nearest"  # Keras' load_img/flow_from_directory default, which the recipe used
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
    dropout: float = 0.5  # after fc1 and fc2 (and MLP layers) in training, frozen or not, as Keras applied it
    augment: bool = False
    seed: int = 0
    valid_fraction: float | None = None
    labels_from_filename: str | None = None  # regex whose first group is the label, for a flat folder of images
    tfds_manual_dir: str | None = None  # where tfds finds manually downloaded archives
    cache_features: bool | None = None  # None = on when the cut is block4_pool or above and augment is off
    cache_dtype: str = "float32"  # or "bfloat16": half the disk and memory for cached features
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = epoch ends only
    keep_checkpoints: int = 3
    dtype: str = "float32"  # or "bfloat16" (params stay float32)
    shard_fc: bool = False  # split fc1/fc2 kernels (and their Adam moments) across devices
    log_every: int = 10

    def to_json(self) -> dict:
        """The config as a JSON-able dict (run.json)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raises UserError naming the first bad value and its CLI flag; touches no file."""
        self._check_choices()
        self._check_counts()
        self._check_numbers()
        self._check_shape()

    def _check_choices(self) -> None:
        from vgg_jax.models.arch import DEPTHS
        from vgg_jax.models.classifier import is_top
        from vgg_jax.models.freeze import POLICIES
        from vgg_jax.data.resize import INTERPOLATIONS, RESIZE_MODES

        choices = {"arch": tuple(DEPTHS), "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "resize": RESIZE_MODES,
                   "interpolation": INTERPOLATIONS, "dtype": DTYPES, "cache_dtype": CACHE_DTYPES,
                   "freeze_through": POLICIES}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                _refuse(name, f"must be one of {', '.join(allowed)}", getattr(self, name))
        if not isinstance(self.top, str) or not is_top(self.top):
            _refuse("top", "must be fc, avg, max or mlp:UNITS[,UNITS...] (e.g. mlp:256 or mlp:512,128)", self.top)
        if not isinstance(self.out, str) or not self.out:
            _refuse("out", "must name a run folder", self.out)

    def _check_counts(self) -> None:
        lows = {"batch_size": 1, "epochs": 1, "keep_checkpoints": 1, "log_every": 1, "checkpoint_every": 0,
                "warmup_steps": 0}  # fmt: skip
        for name, low in lows.items():
            _check_int(name, getattr(self, name), low)
        if self.eval_batch_size is not None:
            _check_int("eval_batch_size", self.eval_batch_size, 1)
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            _refuse("seed", f"must be an integer in [0, {MAX_SEED}]", self.seed)

    def _check_numbers(self) -> None:
        from vgg_jax.models.freeze import parse_lr_mults

        if not _is_real(self.lr) or not self.lr > 0:
            _refuse("lr", "must be finite and > 0", self.lr)
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            _refuse("momentum", "must be finite and in [0, 1)", self.momentum)
        if not _is_real(self.dropout) or not 0 <= self.dropout < 1:
            _refuse("dropout", "must be in [0, 1)", self.dropout)
        if self.clip_norm is not None and (not _is_real(self.clip_norm) or not self.clip_norm > 0):
            _refuse("clip_norm", "must be finite and > 0", self.clip_norm)
        if self.valid_fraction is not None and (not _is_real(self.valid_fraction) or not 0 < self.valid_fraction < 1):
            _refuse("valid_fraction", "must be in (0, 1)", self.valid_fraction)
        if self.labels_from_filename is not None:
            self._check_label_pattern()
        if not all(math.isfinite(f) for f in parse_lr_mults(self.lr_mult).values()):
            _refuse("lr_mult", "factors must be finite", self.lr_mult)

    def _check_label_pattern(self) -> None:
        try:
            groups = re.compile(self.labels_from_filename).groups
        except (re.error, TypeError) as e:
            _refuse("labels_from_filename", f"must be a regular expression ({e})", self.labels_from_filename)
        if groups < 1:
            rule = "needs a group around the label, e.g. '^(cat|dog)\\.'"
            _refuse("labels_from_filename", rule, self.labels_from_filename)

    def _check_shape(self) -> None:
        from vgg_jax.models.arch import WIDTHS

        _check_int("image_size", self.image_size, MIN_IMAGE_SIZE, "(VGG's five 2x2 max-poolings need 32 pixels)")
        widths = self.widths
        if widths is not None and (
            not isinstance(widths, (tuple, list)) or len(widths) != len(WIDTHS)
            or not all(_is_int(w) and w >= 1 for w in widths)
        ):  # fmt: skip
            shown = ",".join(map(str, widths)) if isinstance(widths, (tuple, list)) else widths
            _refuse("widths", f"must be {len(WIDTHS)} integers >= 1, one per stage", shown)
        if self.fc_units is not None:
            _check_int("fc_units", self.fc_units, 1)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """A config from run.json's dict; unknown keys (from other versions) are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in fields}
        values.setdefault("interpolation", "bilinear")  # runs from before 0.3 were resized bilinearly
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


# Fields that may differ when resuming or evaluating a run: where things are, not what is trained.
RUN_LOCAL_FIELDS = frozenset(
    {"out", "data", "weights", "eval_batch_size", "log_every", "keep_checkpoints", "checkpoint_every"}
)


def flag(name: str) -> str:
    """The CLI flag of a config field: 'batch_size' -> '--batch-size'."""
    return "--" + name.replace("_", "-")


def _refuse(name: str, rule: str, value) -> NoReturn:
    raise UserError(f"{flag(name)} {rule}. Received: {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value, low: int, why: str = "") -> None:
    if not _is_int(value) or value < low:
        _refuse(name, f"must be an integer >= {low}" + (f" {why}" if why else ""), value)
