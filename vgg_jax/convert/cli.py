"""`vgg-jax convert` / `python -m vgg_jax.convert`: arguments and the call into the converter, nothing more."""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

from vgg_jax.errors import UserError
from vgg_jax.models import arch
from vgg_jax.models.arch import MIN_IMAGE_SIZE
from vgg_jax.paths import imagenet_params_path


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option with a default its help text does not already state."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and _shows_default(action):  # argparse prints no help line at all for these
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return f"{text} (default: %(default)s)" if _shows_default(action) and "default" not in text else text


def _shows_default(action: argparse.Action) -> bool:
    """An option taking a value, with a default worth stating (flags are off unless given)."""
    return bool(action.option_strings) and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS)


SETTING = re.compile(r"`(\w+)(?:=([^`]*))?`")  # how the library writes a setting in a message: `name` or `name=value`


class Parser(argparse.ArgumentParser):
    """argparse with the house habits: every --help shows defaults, and abbreviated flags are refused."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def flag_words(self, text: str) -> str:
        """`text` as this command says it: each `setting` or `setting=value` the library wrote becomes the flag that
        sets it (`freeze_through=fc2` -> --freeze-through fc2, `cache_features=False` -> --no-cache-features).
        Settings this command has no flag for keep the library's words."""
        by_dest: dict[str, list[argparse.Action]] = {}
        for action in self._actions:
            if action.option_strings and action.dest != "help":
                by_dest.setdefault(action.dest, []).append(action)

        def spoken(match: re.Match) -> str:
            actions, value = by_dest.get(match.group(1)), match.group(2)
            if not actions:
                return match.group(0)
            switch = next((a for a in actions if a.nargs == 0 and str(a.const) == value), None)
            if switch is not None:
                return _long(switch)
            return _long(actions[0]) + ("" if value is None else f" {value}")

        return SETTING.sub(spoken, text)


def _long(action: argparse.Action) -> str:
    """The action's --long option string (its first one when it has none)."""
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="Keras weights file: .h5 (any Keras version), .weights.h5 or .keras")
    p.add_argument("-o", "--output", help="params file to write (default: SOURCE with .safetensors)")
    p.add_argument(
        "--download",
        choices=["vgg16", "vgg16-notop", "vgg19", "vgg19-notop"],
        help="fetch the official Keras ImageNet file (md5-checked, cached) and convert it",
    )
    p.add_argument("--arch", choices=list(arch.DEPTHS), help="expected architecture (default: detected)")
    p.add_argument(
        "--kernels",
        choices=["theano", "tf"],
        help="override the kernel convention the file records or implies (theano = stored flipped, for true convolution)",
    )
    p.add_argument(
        "--fc1-order",
        choices=["chw", "hwc"],
        help="override the fc1 row order the file records or implies (chw = a channels-first Flatten)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="self-check of the transforms: our Flax model vs a float64 numpy forward over the source as read, in the "
        "conventions the report states; it does not check the layer mapping or the conventions (needs jax)",
    )
    p.add_argument(
        "--classes",
        help="a fine-tuned model's class names, comma-separated in label order (default: class_0, class_1, ...)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="a fine-tuned model's input size where the file does not record it (default: the model config's Input "
        "shape, else what fc1's rows fix, else 224)",
    )
    p.add_argument(
        "--pooling",
        choices=["avg", "max"],
        help="the global pooling before a fine-tuned model's head, for a file without a model config (.weights.h5)",
    )
    top = p.add_mutually_exclusive_group()
    top.add_argument(
        "--include-top",
        dest="include_top",
        action="store_true",
        default=None,
        help="require fc1/fc2/predictions (error on a no-top file)",
    )
    top.add_argument("--no-top", dest="include_top", action="store_false", help="keep conv layers only")


def run(args: argparse.Namespace) -> int:
    """Converts (or downloads and converts) as `args` say; `args.flag_words` words the report for this command."""
    from vgg_jax.convert import TopOptions, convert_file
    from vgg_jax.convert.download import fetch
    from vgg_jax.fileio import check_writable

    if bool(args.source) == bool(args.download):
        raise UserError("give either a SOURCE file or --download NAME")
    if args.download:
        output = Path(args.output) if args.output else imagenet_params_path(args.download)
        check_writable(output, "params file")  # before a 500 MB download
        source = fetch(args.download)
    else:
        source = Path(args.source)
        output = Path(args.output) if args.output else source.with_name(source.name.split(".")[0] + ".safetensors")
    if args.image_size is not None and args.image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be an integer >= {MIN_IMAGE_SIZE}. Received: {args.image_size}")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes is not None else None
    top = TopOptions(classes, args.image_size, args.pooling)
    report = convert_file(source, output, args.arch, args.include_top, args.kernels, args.fc1_order, top)
    print(args.flag_words(str(report)))
    if args.check:
        import numpy as np

        from vgg_jax.models import params_io, parity

        size = report.image_size
        images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        rows = parity.check(
            source, params_io.load(output), images, args.kernels, args.fc1_order, args.image_size, args.pooling
        )
        print(f"transform check on 2 random images: {parity.HEADLINE}")
        print(parity.format_rows(rows))
        return 0 if all(r.ok for r in rows) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m vgg_jax.convert", description="Convert Keras VGG weights to a vgg-jax params file.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(argparse.Namespace(**vars(args), flag_words=parser.flag_words))
    except UserError as e:
        print(f"convert: error: {parser.flag_words(str(e))}", file=sys.stderr)
        return 2
