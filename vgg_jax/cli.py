"""`vgg-jax` command line: parses arguments and calls the library; no logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vgg_jax.errors import ConfigError, UserError
from vgg_jax.log import LOGGER
from vgg_jax.train.config import TrainConfig


def _convert(args: argparse.Namespace) -> int:
    from vgg_jax.convert.cli import run

    return run(args)


def _classify(args: argparse.Namespace) -> int:
    from vgg_jax.data.image import load_image
    from vgg_jax.inference.classify import top_k
    from vgg_jax.models import params_io

    if args.top < 1:
        raise UserError(f"--top must be an integer >= 1. Received: {args.top}")
    image = load_image(args.image)
    weights = Path(args.weights)
    random = False
    if weights.suffix in (".h5", ".keras"):
        from vgg_jax.convert import load_keras

        params, report = load_keras(weights)
        arch_name = report.architecture
    else:
        meta = params_io.read_metadata(weights)
        if "head" in params_io.load_keys(weights):
            raise UserError(
                f"{weights}: a fine-tuned model (classes {', '.join(map(str, meta.get('classes', [])))}), not ImageNet "
                f"VGG weights; use vgg_jax.load('{weights}').predict(images) or `vgg-jax predict`"
            )
        arch_name, random = meta.get("architecture", "vgg16"), meta.get("weights") == "random"
        params = params_io.load(weights)
    print(f"{args.image}  ({arch_name.upper()}, {weights.name}{', RANDOM weights' if random else ''})")
    for rank, (wnid, name, p) in enumerate(top_k(params, arch_name, image, args.top), 1):
        print(f"  {rank}. {name:<28} {wnid}  {p:7.2%}")
    return 0


def _params_file(spec: str | None) -> str | None:
    """A Keras weights file is converted once into the cache; params files and "imagenet"/None pass through."""
    if spec is None or Path(spec).suffix not in (".h5", ".keras"):
        return spec
    from vgg_jax.convert import convert_file, sha256
    from vgg_jax.paths import cache_dir

    if not Path(spec).is_file():
        raise UserError(f"{spec}: no such weights file")
    out = cache_dir() / "converted" / f"{sha256(spec)[:24]}.safetensors"
    if not out.exists():
        print(convert_file(spec, out))
    return str(out)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags spell: every field with a flag, from it; text parsed where the field says how."""
    return TrainConfig(**{f.name: _setting(f, getattr(args, f.name)) for f in _flagged_fields()})


def _setting(field: dataclasses.Field, value: Any) -> Any:
    parse = field.metadata["parse"]
    # A field with a parser is not of type str, so a str is what was typed (not the field's default).
    return parse(value) if parse is not None and isinstance(value, str) else value


def _check_run_folder(out: str) -> None:
    """--out must be a folder (or not exist yet) in a place we can write."""
    from vgg_jax.fileio import check_writable

    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{out}: exists and is not a folder; give --out a run folder")
    check_writable(Path(out) / "run.json", "run folder")


def _train(args: argparse.Namespace) -> int:
    """`vgg-jax train`; the library names a bad config field, the command the flag that set it."""
    try:
        return _run_training(args)
    except ConfigError as e:
        raise UserError(e.naming(_flag(e.field))) from None


def _run_training(args: argparse.Namespace) -> int:
    cfg = _train_config(args)
    cfg.validate()  # before the weights are converted and the run folder is touched
    _check_run_folder(cfg.out)
    cfg = dataclasses.replace(cfg, weights=_params_file(cfg.weights))
    if args.distributed:
        from vgg_jax.train.parallel import init_distributed

        init_distributed(args.coordinator, args.num_processes, args.process_id)
    from vgg_jax.train.trainer import train

    train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def _check_batch_size(value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"--batch-size must be an integer >= 1. Received: {value}")


def _evaluate(args: argparse.Namespace) -> int:
    from vgg_jax.inference.evaluate import evaluate

    _check_batch_size(args.batch_size)
    evaluate(args.run, args.data, args.split, args.batch_size, report_dir=args.report, top_losses=args.top_losses)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from vgg_jax.fileio import check_writable
    from vgg_jax.inference.evaluate import predict

    _check_batch_size(args.batch_size)
    if args.clip is not None and not 0 <= args.clip < 0.5:
        raise UserError(f"--clip must be in [0, 0.5). Received: {args.clip}")
    check_writable(args.csv or Path(args.run) / "predictions.csv", "CSV")  # before any checkpoint is loaded
    predict(args.run, args.images, args.csv, args.clip, args.batch_size, fmt=args.format)
    return 0


def _export(args: argparse.Namespace) -> int:
    from vgg_jax.inference.export import export

    export(args.run, args.output, args.which, fmt=args.format)
    return 0


def _bench(args: argparse.Namespace) -> int:
    """A thin shim: the benchmark code lives in the checkout's benchmarks/, not in the installed package."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "throughput.py").is_file():
        raise UserError(
            f"{root / 'benchmarks'}: not found; `vgg-jax bench` runs from a source checkout (pip install -e .)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.throughput import main

    return main(args.args)


def _demo(args: argparse.Namespace) -> int:
    from vgg_jax.demo import run

    return run(args.weights, args.out, args.offline)


def build_parser() -> argparse.ArgumentParser:
    from vgg_jax.convert.cli import Parser
    from vgg_jax.convert.cli import add_arguments as convert_arguments

    parser = Parser(prog="vgg-jax", description="Keras VGG16 weights in JAX/Flax: convert, classify, train.")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # name -> its parser, which words the library's messages in its flags
    commands = [
        ("convert", "convert a Keras VGG weights file (any Keras version) to a params file", convert_arguments,
         _convert),
        ("classify", "top-5 ImageNet classes for an image (sanity check of ported weights)", _classify_arguments,
         _classify),
        ("train", "train a new head (and optionally upper layers) on an image folder or tfds dataset",
         _train_arguments, _train),
        ("evaluate", "accuracy, log loss and confusion matrix of a run's best checkpoint", _evaluate_arguments,
         _evaluate),
        ("predict", "write Kaggle's id,label CSV (label = P(class 1)) for a folder of images", _predict_arguments,
         _predict),
        ("export", "write a run's trained network for vgg_jax.load, Keras, jax.export or TF", _export_arguments,
         _export),
        ("bench", "images/s of our inference and train-step variants (benchmarks/throughput.py)", None, _bench),
        ("demo", "the README's main job: port VGG16 weights and check parity (offline-safe)", _demo_arguments, _demo),
    ]  # fmt: skip
    for name, help_text, arguments, handler in commands:
        p = sub.add_parser(name, help=help_text, add_help=arguments is not None)  # bench: its own parser's --help
        if arguments is not None:
            arguments(p)
        p.set_defaults(func=handler)
    return parser


def _classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image")
    p.add_argument("--weights", required=True, help="params file from `vgg-jax convert` (or a Keras .h5/.keras file)")
    p.add_argument("--top", type=int, default=5)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `vgg-jax train`")
    p.add_argument("--data", help="data to score (default: the run's --data)")
    p.add_argument("--split", default="valid", choices=["train", "valid"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--report", help="folder for report.json, the PNGs and misclassified.csv (default: RUN/eval)")
    p.add_argument("--top-losses", type=int, default=16, help="images in top_losses.png: the most confidently wrong")


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `vgg-jax train`")
    p.add_argument("images", help="folder of unlabelled images (e.g. test1/) or a data root with test1/")
    p.add_argument("--csv", help="output CSV (default: RUN/predictions.csv)")
    p.add_argument("--clip", type=float, help="clip probabilities to [c, 1-c] (log-loss insurance, e.g. 0.05)")
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--format",
        default="kaggle",
        help="kaggle: id,label (label = P(class 1); a column per class beyond two); "
        "full: path, predicted class and every class's probability",
    )


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `vgg-jax train`")
    p.add_argument("-o", "--output", required=True, help="file (or SavedModel folder) to write")
    p.add_argument(
        "--format",
        help="params (.safetensors, for vgg_jax.load), keras (.keras), weights.h5 (.weights.h5), "
        "stablehlo (.jaxexport, jax.export) or savedmodel (a folder; needs tensorflow) "
        "(default: from the output's suffix)",
    )
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint to export")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights", help="Keras VGG16 weights file (default: cached or downloaded official file, else random)"
    )
    p.add_argument("--out", default="runs/demo", help="folder for the converted params")
    p.add_argument("--offline", action="store_true", help="do not try to download")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    settings = p.add_argument_group("training settings (recorded in the run folder's run.json)")
    types = typing.get_type_hints(TrainConfig)
    for field in _flagged_fields():
        _add_setting(settings, field, types[field.name])
    run = p.add_argument_group("this command")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    run.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() (auto-detects SLURM/TPU, or use the next three)",
    )
    run.add_argument("--coordinator", help="host:port of process 0, e.g. 127.0.0.1:1234")
    run.add_argument("--num-processes", type=int, help="processes in the job")
    run.add_argument("--process-id", type=int, help="this process's index in the job, from 0")


def _flagged_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that have a flag (vgg_jax.train.config.option), in the dataclass's order."""
    return [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


def _flag(field: str) -> str:
    """The flag of a config field: 'batch_size' -> '--batch-size'."""
    return "--" + field.replace("_", "-")


def _add_setting(group: argparse._ActionsContainer, field: dataclasses.Field, kind: Any) -> None:
    """One config field as a flag, from its type and its metadata; the default is the field's own."""
    facts, flag = field.metadata, _flag(field.name)
    shown = argparse.SUPPRESS if facts["hidden"] else facts["help"]
    if kind == bool | None:  # unset (None) lets the library decide
        pair = group.add_mutually_exclusive_group()
        pair.add_argument(flag, dest=field.name, action="store_true", default=None, help=shown)
        no_help = argparse.SUPPRESS if facts["hidden"] else f"never, not even where {flag} is the default"
        pair.add_argument("--no-" + flag[2:], dest=field.name, action="store_false", default=None, help=no_help)
    elif kind is bool:
        group.add_argument(flag, dest=field.name, action="store_true", default=field.default, help=shown)
    else:
        choices = facts["choices"]
        group.add_argument(
            flag,
            dest=field.name,
            type=None if facts["parse"] else _scalar(kind),
            required=field.default is dataclasses.MISSING,
            default=facts.get("cli_default", None if field.default is dataclasses.MISSING else field.default),
            metavar="{" + ",".join(choices) + "}" if choices else facts["metavar"],
            help=shown,
        )


def _scalar(kind: Any) -> type:
    """int for `int` or `int | None`: what argparse converts the typed text with (choices are validate()'s)."""
    (scalar,) = [t for t in typing.get_args(kind) or (kind,) if t is not type(None)]
    return scalar


def enable_compilation_cache() -> None:
    """jax's persistent compilation cache under ours, so a command's second run skips XLA compilation."""
    import os

    if os.environ.get("VGG_JAX_NO_COMPILATION_CACHE"):
        return
    import jax

    from vgg_jax.paths import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)  # VGG16's CPU steps compile in 0.2-0.4 s
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:  # every argument after `bench` belongs to benchmarks/throughput.py's own parser
        args = argparse.Namespace(command="bench", func=_bench, args=argv[1:])
    else:
        args = parser.parse_args(argv)
    if args.command not in ("convert",):  # convert never touches jax
        enable_compilation_cache()
    words = parser.commands[args.command].flag_words if args.command in parser.commands else str
    args.flag_words = words
    spoken = _FlagWords(words)
    LOGGER.addFilter(spoken)
    try:
        return args.func(args)
    except UserError as e:
        print(f"vgg-jax: error: {words(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment (full or read-only disk, permissions) where no UserError names it
        from vgg_jax.fileio import os_reason

        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"vgg-jax: error: {where}{os_reason(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vgg-jax: interrupted", file=sys.stderr)
        return 130
    finally:
        LOGGER.removeFilter(spoken)


class _FlagWords(logging.Filter):
    """Words the library's log lines as the command line speaks: its settings become this command's flags."""

    def __init__(self, words: Callable[[str], str]):
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.words(record.getMessage()), None
        return True


if __name__ == "__main__":
    sys.exit(main())
