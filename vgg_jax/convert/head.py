"""A fine-tuned Keras model's top: what follows the VGG (fc1/fc2, global pooling or Dense+ReLU layers) and its new
Dense head, mapped onto vgg_jax.models.classifier.Classifier's tops (fc, avg, max, mlp:UNITS) and its `head`.

The model config (a `model.save` file's model_config, a .keras archive's config.json) says which layers follow the
VGG and their activations; without one (a .weights.h5, a save_weights file) the top is inferred from the shapes,
and the report says so. numpy-free: only shapes are looked at here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vgg_jax.convert.conventions import config_layers
from vgg_jax.convert.source import Layer, Source
from vgg_jax.errors import UserError
from vgg_jax.models import arch

SUPPORTED = "vgg-jax maps a VGG, then fc1/fc2, global pooling or Dense+ReLU layers, then one Dense head"
SKIPPED = ("InputLayer", "Dropout", "SpatialDropout2D")
POOLS = {"Flatten": "flatten", "GlobalAveragePooling2D": "avg", "GlobalMaxPooling2D": "max"}
CONV_CLASSES = ("Conv2D", "Convolution2D")
VGG_CONV_COUNTS = {sum(d) for d in arch.DEPTHS.values()}
POOL_NAME = re.compile(r"block\d+_pool")
MERGE_NOTE = (
    "head: 2-unit softmax -> 1 sigmoid unit (w = W[:,1] - W[:,0], b = b[1] - b[0]; "
    "softmax([z0, z1])[1] = sigmoid(z1 - z0), exactly)"
)
RESIZE_NOTE = "squash + nearest resize (Keras load_img's defaults)"


@dataclass
class Dense:
    """A Dense layer after the VGG: its weights and, where a model config says, its activation."""

    layer: Layer
    activation: str | None  # None: no model config says

    @property
    def name(self) -> str:
        return self.layer.name.split("/")[-1]

    @property
    def fan_in(self) -> int:
        return self.layer.shapes[0][0]

    @property
    def units(self) -> int:
        return self.layer.shapes[0][1]


@dataclass
class FineTuned:
    """The top of a fine-tuned model as vgg-jax builds it: `top`, the layers it maps and how the head reads."""

    top: str  # "fc", "avg", "max" or "mlp:U[,U...]"
    hidden: list[Dense]  # fc1/fc2, or the MLP's layers
    head: Dense
    image_size: int
    image_size_from: str
    notes: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    @property
    def head_units(self) -> int:
        """1 for two classes (one sigmoid unit, a 2-unit softmax included), else the number of classes."""
        return 1 if self.head.units <= 2 else self.head.units

    @property
    def num_classes(self) -> int:
        return max(2, self.head.units)

    @property
    def merges_softmax(self) -> bool:
        """A 2-unit softmax head, converted exactly to our one sigmoid unit."""
        return self.head.units == 2

    @property
    def head_activation(self) -> str:
        return "sigmoid" if self.head_units == 1 else "softmax"

    @property
    def mapping(self) -> list[tuple[str, Layer]]:
        names = ["fc1", "fc2"] if self.top == "fc" else [f"mlp{i}" for i in range(1, len(self.hidden) + 1)]
        return [*zip(names, (d.layer for d in self.hidden)), ("head", self.head.layer)]

    @property
    def fc_units(self) -> int | None:
        return self.hidden[0].units if self.top == "fc" else None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical shapes of the top's params (the head with head_units outputs)."""
        out: dict[str, tuple[int, ...]] = {}
        for name, layer in self.mapping:
            units = self.head_units if name == "head" else layer.shapes[0][1]
            out[f"{name}/kernel"] = (layer.shapes[0][0], units)
            out[f"{name}/bias"] = (units,)
        return out


def vgg_tail(config: dict | None) -> list[tuple[str, dict]] | None:
    """The model config's layers after the VGG's last pooling (nested models expanded), or None when the config
    shows no VGG (no config, no pooling, a conv count no VGG has, batch norm among the convs)."""
    layers = config_layers(config)
    pools = [i for i, (_, cfg) in enumerate(layers) if POOL_NAME.fullmatch(str(cfg.get("name")))]
    pools = pools or [i for i, (cls, _) in enumerate(layers) if cls == "MaxPooling2D"]
    if not pools:
        return None
    inside = [cls for cls, _ in layers[: pools[-1]]]
    if sum(inside.count(c) for c in CONV_CLASSES) not in VGG_CONV_COUNTS or "BatchNormalization" in inside:
        return None
    return layers[pools[-1] + 1 :]


def check_tail(path: Path, tail: list[tuple[str, dict]]) -> None:
    """UserError naming the first layer after the VGG that no vgg-jax top has (BatchNormalization, a Conv2D, ...)."""
    for cls, cfg in tail:
        if cls not in (*SKIPPED, *POOLS, "Dense", "Activation"):
            raise unsupported(path, cfg, cls)


def unsupported(path: Path, cfg: dict, what: str, where: str = "after the VGG") -> UserError:
    return UserError(f"{path}: layer '{cfg.get('name')}' ({what}) {where} is not supported; {SUPPORTED}")


def is_finetuned(source: Source, denses: list[Layer]) -> bool:
    """Whether the dense layers are a new top rather than VGG's own fc1/fc2/predictions (or none at all): a
    one-unit last layer always is (VGG16(classes=1) makes no sense, Dense(1, sigmoid) named 'predictions' does)."""
    if not denses:
        return False
    if len(denses) != 3 or denses[-1].shapes[0][1] == 1:
        return True
    last = denses[-1]
    names_known = source.names_from != "order" and source.format != "keras0"
    return last.name.split("/")[-1] != "predictions" if names_known else last.shapes[0][1] != 1000


def plan(
    source: Source,
    denses: list[Layer],
    tail: list[tuple[str, dict]] | None,
    width: int,
    image_size: int | None = None,
    pooling: str | None = None,
) -> FineTuned:
    """The fine-tuned top of `source`, from its model config's tail when it has one, else from the shapes."""
    path = source.path
    notes: list[str] = []
    if tail is not None:
        pool, hidden, head = _from_config(path, tail, denses)
        if pooling and pool in ("avg", "max") and pooling != pool:
            raise UserError(f"{path}: `pooling={pooling}`, but the model config has {pool} pooling; drop `pooling`")
    else:
        pool, hidden, head = _from_shapes(path, denses, width, pooling)
        notes.append(
            "no model config in the file: the top was inferred from the weights' shapes"
            + (", hidden Dense layers taken as ReLU" if hidden else "")
            + "; convert the .keras or model.save .h5 file to have it read, not guessed"
        )
    top = _top(path, pool, hidden, head, source.names_from != "order" and source.format != "keras0")
    notes += _head_notes(path, head)
    _check_chain(path, pool, hidden, head, width)
    rows_layer = (hidden or [head])[0] if pool == "flatten" else None
    size, size_from = image_size_of(path, source.config, rows_layer.layer if rows_layer else None, width, image_size)
    return FineTuned(top, hidden, head, size, size_from, notes)


def _from_config(
    path: Path, tail: list[tuple[str, dict]], denses: list[Layer]
) -> tuple[str | None, list[Dense], Dense]:
    """(pooling kind, hidden Dense layers, head) as the config's tail lists them; Dense configs matched to weights."""
    check_tail(path, tail)
    pool: str | None = None
    configs: list[dict] = []
    for cls, cfg in tail:
        if cls in POOLS:
            if pool is not None or configs:
                raise unsupported(path, cfg, cls, "after " + ("the Dense layers" if configs else "another pooling"))
            pool = POOLS[cls]
        elif cls == "Dense":
            configs.append(dict(cfg))
        elif cls == "Activation":
            if not configs or configs[-1].get("activation") not in (None, "linear"):
                raise unsupported(path, cfg, cls)
            configs[-1]["activation"] = cfg.get("activation")
    layers = _match(path, configs, denses)
    found = [Dense(layer, _activation(cfg)) for layer, cfg in zip(layers, configs)]
    if pool is None:
        raise unsupported(
            path, configs[0], "Dense", "right after the VGG's last pooling (no Flatten or global pooling)"
        )
    return pool, found[:-1], found[-1]


def _match(path: Path, configs: list[dict], denses: list[Layer]) -> list[Layer]:
    """The weighted layer of each Dense config: by name, else by order when the counts agree."""
    by_name = {layer.name.split("/")[-1]: layer for layer in denses}
    names = [str(cfg.get("name")) for cfg in configs]
    if len(by_name) == len(denses) and set(names) == set(by_name):
        return [by_name[n] for n in names]
    if len(configs) != len(denses):
        raise UserError(
            f"{path}: the model config lists {len(configs)} Dense layer(s) after the VGG, the weights hold "
            f"{len(denses)} ({', '.join(by_name)}); the file is inconsistent"
        )
    return list(denses)


def _activation(cfg: dict) -> str:
    value = cfg.get("activation")
    if isinstance(value, dict):  # a serialized activation object
        value = value.get("config", {}).get("name") or value.get("class_name")
    return str(value or "linear")


def _from_shapes(
    path: Path, denses: list[Layer], width: int, pooling: str | None
) -> tuple[str | None, list[Dense], Dense]:
    """Without a model config: a Flatten when the first Dense takes more than the last conv's width, a global
    pooling (which one only `pooling` can say) when it takes exactly that many and is the head."""
    found = [Dense(layer, None) for layer in denses]
    hidden, head = found[:-1], found[-1]
    if hidden or head.fan_in != width:
        if pooling:
            raise UserError(
                f"{path}: `pooling={pooling}`, but the head takes {head.fan_in} features, not a pooled {width}"
            )
        return "flatten", hidden, head
    if pooling is None:
        raise UserError(
            f"{path}: no model config says what lies between the VGG and the head '{head.name}' ({width} features: "
            "global average or max pooling); pass `pooling=avg` or `pooling=max`, or convert the .keras or "
            "model.save .h5 file, which records it"
        )
    return pooling, [], head


def _top(path: Path, pool: str | None, hidden: list[Dense], head: Dense, named: bool) -> str:
    """fc, avg, max or mlp:UNITS for the layers found; UserError naming a layer no such top has. Without layer
    names (`named` False: a file mapped by order), two 4096-unit layers on the Flatten are taken for fc1/fc2."""
    if pool in ("avg", "max"):
        if hidden:
            raise unsupported(path, {"name": hidden[0].name}, "Dense", "after global pooling")
        return pool
    names = [d.name for d in hidden]
    unnamed_fc = not named and len(hidden) == 2 and hidden[0].units == hidden[1].units == arch.FC_UNITS
    if names[:2] == ["fc1", "fc2"] or unnamed_fc:
        if len(hidden) > 2:
            raise unsupported(path, {"name": names[2]}, "Dense", "after fc2 and before the head")
        top = "fc"
    elif not hidden:
        raise UserError(
            f"{path}: the head '{head.name}' takes the flattened block5_pool directly, a top vgg-jax does not have; "
            + SUPPORTED
        )
    else:
        top = "mlp:" + ",".join(str(d.units) for d in hidden)
    for d in hidden:
        if d.activation not in (None, "relu"):
            raise unsupported(path, {"name": d.name}, f"Dense, activation '{d.activation}'")
    if top == "fc" and hidden[0].units != hidden[1].units:
        raise UserError(
            f"{path}: fc1 has {hidden[0].units} units and fc2 {hidden[1].units}; vgg-jax's fc top has one width"
        )
    return top


def _head_notes(path: Path, head: Dense) -> list[str]:
    """Checks the head's activation against its units; notes on what was taken for what."""
    act, units = head.activation, head.units
    kind = "sigmoid" if units == 1 else "softmax"
    if act is None:
        return [f"head activation not recorded: taken as {kind} ({units} unit{'s' if units > 1 else ''})"]
    if act not in ("sigmoid", "softmax", "linear"):
        raise unsupported(path, {"name": head.name}, f"Dense head, activation '{act}'", "as the last layer")
    if act == "softmax" and units == 1:
        raise UserError(f"{path}: head '{head.name}' is a softmax over 1 unit (always 1.0); nothing to convert")
    if act == "sigmoid" and units > 1:
        raise UserError(
            f"{path}: head '{head.name}' has {units} sigmoid units (independent probabilities: multi-label); vgg-jax "
            "heads are one sigmoid unit (2 classes) or a softmax over 2 or more classes"
        )
    if act == "linear":
        return [f"head '{head.name}' has no activation (logits, trained with from_logits=True): taken as {kind}"]
    return []


def _check_chain(path: Path, pool: str | None, hidden: list[Dense], head: Dense, width: int) -> None:
    """Each Dense takes what the one before gives (a pooled top: the last conv's width)."""
    previous = width if pool in ("avg", "max") else None
    for d in [*hidden, head]:
        if previous is not None and d.fan_in != previous:
            raise UserError(
                f"{path}: layer '{d.name}' takes {d.fan_in} inputs, but what comes before it gives {previous}; "
                "the file is inconsistent"
            )
        previous = d.units


def image_size_of(
    path: Path, config: dict | None, rows_layer: Layer | None, width: int, override: int | None
) -> tuple[int, str]:
    """(image side, where it comes from): `image_size`, the config's Input shape, the rows of the Dense on the
    Flatten ((S/32)^2 * width), else 224 assumed. UserError when the rows fit no such side or not the one given."""
    side = None
    if rows_layer is not None:
        rows = rows_layer.shapes[0][0]
        side = math.isqrt(rows // width) if rows % width == 0 else 0
        if side < 1 or side * side * width != rows:
            raise UserError(
                f"{path}: layer '{rows_layer.name}' takes {rows} features, not the Flatten of a square block5_pool "
                f"of {width} channels"
            )
    recorded = input_size(path, config)
    if override is not None:
        size, source = override, "`image_size`"
    elif recorded is not None:
        size, source = recorded, "model config Input shape"
    elif side is not None:
        size, source = 32 * side, f"inferred from the rows of {rows_layer.name.split('/')[-1]} ({side}x{side}x{width})"
    else:
        size, source = arch.IMAGE_SIZE, "assumed: no input size recorded; pass `image_size` to set it"
    if side is not None and size // 32 != side:
        raise UserError(
            f"{path}: layer '{rows_layer.name.split('/')[-1]}' takes the Flatten of a {side}x{side}x{width} "
            f"block5_pool ({32 * side}x{32 * side} images), not of {size}x{size} images ({source})"
            + ("; pass `image_size` to set it" if source != "`image_size`" else "")
        )
    return size, source


def input_size(path: Path, config: dict | None) -> int | None:
    """The square image side of the config's first Input shape (channels first or last), None when not fixed."""
    for _, cfg in config_layers(config):
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if not isinstance(shape, list) or len(shape) != 4:
            continue
        dims = shape[1:3] if shape[3] == 3 else shape[2:4]
        if None in dims:
            return None
        if dims[0] != dims[1] or not all(isinstance(d, int) for d in dims):
            raise UserError(f"{path}: the model takes {dims[0]}x{dims[1]} images; vgg-jax models take square images")
        return dims[0]
    return None


def class_names(path: Path, given: list[str] | None, count: int) -> tuple[list[str], str]:
    """The class names (`classes`, else class_0, class_1, ...) and the report's line about them."""
    if given is None:
        names = [f"class_{i}" for i in range(count)]
        return (
            names,
            f"{', '.join(names)} (a Keras model does not record class names: set them with `classes=NAME,NAME...`)",
        )
    if len(given) != count or len(set(given)) != count or not all(given):
        raise UserError(
            f"{path}: `classes` gives {len(given)} name(s) ({', '.join(given)}), the head has {count} classes; "
            f"give {count} distinct non-empty names, in label order"
        )
    return list(given), f"{', '.join(given)} (from `classes`)"


def transforms(fine: FineTuned) -> list[str]:
    """The fine-tuned top's transforms, for the report."""
    if fine.merges_softmax:
        return [MERGE_NOTE]
    return []
