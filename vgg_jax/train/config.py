"""Training configuration: one frozen dataclass, defaults = the 2017 recipe (VGG16 ImageNet, fc1/fc2 kept,
everything frozen but a new 1-unit sigmoid head, Adam 1e-3, binary cross-entropy, one epoch).

Each field also carries its command-line facts (help, choices, ...) in its metadata: `vgg-jax train` is built from
them (vgg_jax.cli), so a field, its default and its flag are written once, here. The library speaks of fields only:
validate() raises ConfigError naming the field, which the CLI re-names as the flag that set it."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any, NoReturn

from vgg_jax.data.resize import INTERPOLATIONS, RESIZE_MODES
from vgg_jax.errors import ConfigError
from vgg_jax.models.arch import DEPTHS, MIN_IMAGE_SIZE, WIDTHS
from vgg_jax.models.freeze import POLICIES, parse_lr_mults

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
CACHE_DTYPES = ("float32", "bfloat16")  # how cached features are stored
DTYPES = ("float32", "bfloat16")  # compute dtypes; params stay float32
MAX_SEED = 2**31 - 1  # numpy's SeedSequence refuses negative seeds; jax and tf.data take int32-sized ones


def option(
    default: Any = MISSING,
    *,
    help: str,
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    hidden: bool = False,
    cli_default: Any = MISSING,
) -> Any:
    """A TrainConfig field with its `vgg-jax train` flag described in its metadata.

    The flag is `--` + the field name with dashes; its value is parsed by the field's type (int, float, str; a bool
    is a switch, a `bool | None` a --X/--no-X pair that leaves None when neither is given) or by `parse` (text ->
    value, for a type the command line cannot spell, e.g. widths '8,8,16,16,16'). `choices` is the closed set
    validate() checks and --help lists; `hidden` keeps the flag out of --help; `cli_default` is the command's
    default where it differs from the library's. A field made without option() has no flag.
    """
    facts = {"help": help, "choices": choices, "metavar": metavar, "parse": parse, "hidden": hidden}
    if cli_default is not MISSING:
        facts["cli_default"] = cli_default
    return dataclasses.field(default=default, metadata=facts)


def parse_widths(spec: str) -> tuple[int, ...] | None:
    """'8,8,16,16,16' -> (8, 8, 16, 16, 16); '' -> None. The values themselves are checked by validate()."""
    if not spec:
        return None
    try:
        return tuple(int(w) for w in spec.split(","))
    except ValueError:
        _refuse("widths", "expects comma-separated integers, e.g. 8,8,16,16,16", spec)


@dataclass(frozen=True)
class TrainConfig:
    data: str = option(help="ROOT with train/ and valid/ class subfolders, ROOT/{class}/*, or tfds:NAME[:SPLIT]")
    out: str = option(help="run folder (checkpoints, metrics.jsonl, curves.png, run.json)")
    weights: str | None = option(
        None,  # the library's default: a random backbone; the command's: the ImageNet weights
        help="params file from `vgg-jax convert`, a Keras .h5/.keras file, 'imagenet' (the official Keras file, "
        "downloaded once, md5-checked, converted and cached), or 'random' (a random backbone)",
        cli_default="imagenet",
    )
    arch: str = option("vgg16", help="VGG depth (Keras publishes ImageNet weights for vgg16 and vgg19)",
                       choices=tuple(DEPTHS))  # fmt: skip
    widths: tuple[int, ...] | None = option(
        None, help="conv widths of the five stages, e.g. 8,8,16,16,16 (small test variants; default: VGG's 64..512)",
        parse=parse_widths, hidden=True,
    )  # fmt: skip
    fc_units: int | None = option(None, help="units of fc1 and fc2 (small test variants; default: 4096)", hidden=True)
    top: str = option(
        "fc",
        help="fc: fc1/fc2 as in the recipe; avg/max: global pooling; mlp:UNITS[,UNITS...]: new Dense+ReLU+dropout "
        "layers on block5_pool, e.g. mlp:256",
    )
    image_size: int = option(224, help=f"side of the square network input, in pixels (>= {MIN_IMAGE_SIZE})")
    resize: str = option(
        "squash",
        help="squash (the recipe), center-crop (the central square) or pad (fit the long side, pad with the mean)",
        choices=RESIZE_MODES,
    )
    interpolation: str = option(
        "nearest",
        help="nearest (what the recipe's flow_from_directory used) or bilinear (Pillow's, antialiased)",
        choices=INTERPOLATIONS,
    )
    epochs: int = option(1, help="passes over the training data")
    batch_size: int = option(32, help="global batch size: split over every device of every process")
    eval_batch_size: int | None = option(None, help="batch size for validation (default: --batch-size)")
    optimizer: str = option("adam", help="adam, or sgd with --momentum", choices=OPTIMIZERS)
    lr: float = option(1e-3, help="learning rate (the peak, with --warmup-steps or --schedule cosine)")
    momentum: float = option(0.9, help="SGD momentum")
    schedule: str = option(
        "constant", help="learning rate over the run: constant, or cosine decay to 0 (after --warmup-steps)",
        choices=SCHEDULES,
    )  # fmt: skip
    warmup_steps: int = option(0, help="steps of linear warmup from 0 to --lr")
    clip_norm: float | None = option(None, help="clip the trainable gradients' global norm")
    freeze_through: str = option(
        "fc2", help="freeze this layer and all below (fc2 = the recipe: head only)", choices=POLICIES
    )
    lr_mult: str | None = option(None, help="per-group learning-rate factors, e.g. conv=0.1,fc=0.5")
    dropout: float = option(
        0.5,
        help="dropout rate after fc1 and fc2 (and MLP layers) in training, frozen or not, as Keras applied it; 0 = off",
    )
    augment: bool = option(False, help="random crop + horizontal flip (off in the recipe)")
    seed: int = option(0, help=f"random seed (initialisation, shuffles, augmentation, dropout), 0 to {MAX_SEED}")
    valid_fraction: float | None = option(
        None, help="hold out this share of train when there is no valid split (folders: 0.1)"
    )
    labels_from_filename: str | None = option(
        None,
        help="label a flat folder of images by the first group of REGEX on each file name, e.g. '^(cat|dog)\\.'"
        " (default: <label>.<id>.jpg names are detected)",
        metavar="REGEX",
    )
    tfds_manual_dir: str | None = option(None, help="where tensorflow-datasets looks for manually downloaded archives")
    cache_features: bool | None = option(
        None,  # None: on when the cut is block4_pool or above and augment is off
        help="compute the frozen layers' output once, store it memory-mapped, train only what lies above "
        "(default for the fc1/fc2/block5_pool/block4_pool cuts without --augment)",
    )
    cache_dtype: str = option(
        "float32", help="how cached features are stored (bfloat16: half the disk and memory)", choices=CACHE_DTYPES
    )
    checkpoint_every: int = option(0, help="also checkpoint every N steps; 0 = at epoch ends only")
    keep_checkpoints: int = option(3, help="the last N checkpoints kept (and the best by validation loss)")
    dtype: str = option(
        "float32",
        help="compute dtype (params, loss and optimizer stay float32); bfloat16 recommended on GPU/TPU",
        choices=DTYPES,
    )
    shard_fc: bool = option(False, help="split fc1/fc2 weights and their optimizer state across devices")
    log_every: int = option(10, help="steps between logged training metrics")

    def to_json(self) -> dict:
        """The config as a JSON-able dict (run.json)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """ConfigError (a UserError, so a ValueError) naming the first bad field and its value; touches no file."""
        self._check_choices()
        self._check_counts()
        self._check_numbers()
        self._check_shape()

    def _check_choices(self) -> None:
        from vgg_jax.models.classifier import is_top

        for field in dataclasses.fields(self):
            if (allowed := field.metadata.get("choices")) and getattr(self, field.name) not in allowed:
                _refuse(field.name, f"must be one of {', '.join(allowed)}", getattr(self, field.name))
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


# Fields that may differ when resuming or evaluating a run: where things are, not what is trained.
RUN_LOCAL_FIELDS = frozenset(
    {"out", "data", "weights", "eval_batch_size", "log_every", "keep_checkpoints", "checkpoint_every"}
)


def _refuse(name: str, rule: str, value) -> NoReturn:
    raise ConfigError(name, f"{rule}. Received: {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value, low: int, why: str = "") -> None:
    if not _is_int(value) or value < low:
        _refuse(name, f"must be an integer >= {low}" + (f" {why}" if why else ""), value)
