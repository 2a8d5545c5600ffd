"""`vgg-jax` command line: parses arguments and calls the library; no logic lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgg_jax.errors import UserError


def _convert(args: argparse.Namespace) -> int:
    from convert.cli import run

    return run(args)


def _classify(args: argparse.Namespace) -> int:
    from vgg_jax import params_io
    from vgg_jax.classify import top_k
    from vgg_jax.image import load_image

    image = load_image(args.image)
    weights = Path(args.weights)
    if weights.suffix in (".h5", ".keras"):
        from convert import load_keras

        params, report = load_keras(weights)
        arch_name = report.architecture
    else:
        arch_name = params_io.read_metadata(weights).get("architecture", "vgg16")
        params = params_io.load(weights)
    print(f"{args.image}  ({arch_name.upper()}, {weights.name})")
    for rank, (wnid, name, p) in enumerate(top_k(params, arch_name, image, args.top), 1):
        print(f"  {rank}. {name:<28} {wnid}  {p:7.2%}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vgg_jax.demo import run

    return run(args.weights, args.out, args.offline)


def build_parser() -> argparse.ArgumentParser:
    from convert.cli import add_arguments as convert_arguments

    parser = argparse.ArgumentParser(prog="vgg-jax", description="Keras VGG16 weights in JAX/Flax: convert, classify, train.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a Keras VGG weights file (any Keras version) to a params file")
    convert_arguments(p)
    p.set_defaults(func=_convert)

    p = sub.add_parser("classify", help="top-5 ImageNet classes for an image (sanity check of ported weights)")
    p.add_argument("image")
    p.add_argument("--weights", required=True, help="params file from `vgg-jax convert` (or a Keras .h5/.keras file)")
    p.add_argument("--top", type=int, default=5)
    p.set_defaults(func=_classify)

    p = sub.add_parser("demo", help="the README's main job: port VGG16 weights and check parity (offline-safe)")
    p.add_argument("--weights", help="Keras VGG16 weights file (default: cached or downloaded official file, else random)")
    p.add_argument("--out", default="runs/demo", help="folder for the converted params")
    p.add_argument("--offline", action="store_true", help="do not try to download")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"vgg-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vgg-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
