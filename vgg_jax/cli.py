"""`vgg-jax` command line: parses arguments and calls the library; no logic lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgg_jax.errors import UserError


def _convert(args: argparse.Namespace) -> int:
    from vgg_jax.convert.cli import run

    return run(args)


def _classify(args: argparse.Namespace) -> int:
    from vgg_jax.models import params_io
    from vgg_jax.inference.classify import top_k
    from vgg_jax.data.image import load_image

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


def _train_config(args: argparse.Namespace):
    from vgg_jax.train.config import TrainConfig

    return TrainConfig(
        data=args.data,
        out=args.out,
        weights=args.weights,
        arch=args.arch,
        widths=_widths(args.widths),
        fc_units=args.fc_units,
        top=args.top,
        image_size=args.image_size,
        resize=args.resize,
        interpolation=args.interpolation,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        clip_norm=args.clip_norm,
        freeze_through=args.freeze_through,
        lr_mult=args.lr_mult,
        dropout=args.dropout,
        augment=args.augment,
        seed=args.seed,
        valid_fraction=args.valid_fraction,
        labels_from_filename=args.labels_from_filename,
        cache_features=args.cache_features,
        cache_dtype=args.cache_dtype,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        dtype=args.dtype,
        log_every=args.log_every,
        shard_fc=args.shard_fc,
        tfds_manual_dir=args.tfds_manual_dir,
    )


def _widths(spec: str | None) -> tuple[int, ...] | None:
    """'8,8,16,16,16' -> (8, 8, 16, 16, 16); the values themselves are checked by TrainConfig.validate."""
    if not spec:
        return None
    try:
        return tuple(int(w) for w in spec.split(","))
    except ValueError:
        raise UserError(f"--widths expects comma-separated integers, e.g. 8,8,16,16,16. Received: {spec!r}") from None


def _check_run_folder(out: str) -> None:
    """--out must be a folder (or not exist yet) in a place we can write."""
    from vgg_jax.fileio import check_writable

    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{out}: exists and is not a folder; give --out a run folder")
    check_writable(Path(out) / "run.json", "run folder")


def _train(args: argparse.Namespace) -> int:
    cfg = _train_config(args)
    cfg.validate()  # before the weights are converted and the run folder is touched
    _check_run_folder(cfg.out)
    cfg = cfg.replace(weights=_params_file(cfg.weights))
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
    from vgg_jax.inference.evaluate import predict
    from vgg_jax.fileio import check_writable

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

    parser = Parser(
        prog="vgg-jax", description="Keras VGG16 weights in JAX/Flax: convert, classify, train."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a Keras VGG weights file (any Keras version) to a params file")
    convert_arguments(p)
    p.set_defaults(func=_convert)

    p = sub.add_parser("classify", help="top-5 ImageNet classes for an image (sanity check of ported weights)")
    p.add_argument("image")
    p.add_argument("--weights", required=True, help="params file from `vgg-jax convert` (or a Keras .h5/.keras file)")
    p.add_argument("--top", type=int, default=5)
    p.set_defaults(func=_classify)

    p = sub.add_parser(
        "train", help="train a new head (and optionally upper layers) on an image folder or tfds dataset"
    )
    _train_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="accuracy, log loss and confusion matrix of a run's best checkpoint")
    p.add_argument("run", help="run folder written by `vgg-jax train`")
    p.add_argument("--data", help="data to score (default: the run's --data)")
    p.add_argument("--split", default="valid", choices=["train", "valid"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--report", help="folder for report.json, the PNGs and misclassified.csv (default: RUN/eval)")
    p.add_argument("--top-losses", type=int, default=16, help="images in top_losses.png: the most confidently wrong")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="write Kaggle's id,label CSV (label = P(class 1)) for a folder of images")
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
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="write a run's trained network for vgg_jax.load, Keras, jax.export or TF")
    p.add_argument("run", help="run folder written by `vgg-jax train`")
    p.add_argument("-o", "--output", required=True, help="file (or SavedModel folder) to write")
    p.add_argument(
        "--format",
        help="params (.safetensors, for vgg_jax.load), keras (.keras), weights.h5 (.weights.h5), "
        "stablehlo (.jaxexport, jax.export) or savedmodel (a folder; needs tensorflow) "
        "(default: from the output's suffix)",
    )
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint to export")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "bench", add_help=False, help="images/s of our inference and train-step variants (benchmarks/throughput.py)"
    )
    p.set_defaults(func=_bench)

    p = sub.add_parser("demo", help="the README's main job: port VGG16 weights and check parity (offline-safe)")
    p.add_argument(
        "--weights", help="Keras VGG16 weights file (default: cached or downloaded official file, else random)"
    )
    p.add_argument("--out", default="runs/demo", help="folder for the converted params")
    p.add_argument("--offline", action="store_true", help="do not try to download")
    p.set_defaults(func=_demo)
    return parser


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from vgg_jax.train import config
    from vgg_jax.models.arch import DEPTHS
    from vgg_jax.models.freeze import POLICIES
    from vgg_jax.data.resize import RESIZE_MODES

    p.add_argument(
        "--data",
        required=True,
        help="ROOT with train/ and valid/ class subfolders, ROOT/{class}/*, or tfds:NAME[:SPLIT]",
    )
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, curves.png, run.json)")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="params file from `vgg-jax convert`, a Keras .h5/.keras file, 'imagenet' (the official Keras file, "
        "downloaded once, md5-checked, converted and cached), or 'random' (a random backbone)",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=config.OPTIMIZERS, default="adam")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--schedule", choices=config.SCHEDULES, default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--clip-norm", type=float, help="clip the trainable gradients' global norm")
    p.add_argument(
        "--freeze-through",
        choices=POLICIES,
        default="fc2",
        help="freeze this layer and all below (fc2 = the recipe: head only)",
    )
    p.add_argument("--lr-mult", help="per-group learning-rate factors, e.g. conv=0.1,fc=0.5")
    p.add_argument(
        "--dropout",
        type=float,
        default=0.5,
        help="dropout rate after fc1 and fc2 (and MLP layers) in training, frozen or not, as Keras applied it; 0 = off",
    )
    p.add_argument("--augment", action="store_true", help="random crop + horizontal flip (off in the recipe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--valid-fraction", type=float, help="hold out this share of train when there is no valid split (folders: 0.1)"
    )
    p.add_argument(
        "--labels-from-filename",
        metavar="REGEX",
        help="label a flat folder of images by the first group of REGEX on each file name, e.g. '^(cat|dog)\\.'"
        " (default: <label>.<id>.jpg names are detected)",
    )
    p.add_argument("--tfds-manual-dir", help="where tensorflow-datasets looks for manually downloaded archives")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-features",
        dest="cache_features",
        action="store_true",
        default=None,
        help="compute the frozen layers' output once, store it memory-mapped, train only what lies above "
        "(default for the fc1/fc2/block5_pool/block4_pool cuts without --augment)",
    )
    cache.add_argument("--no-cache-features", dest="cache_features", action="store_false")
    p.add_argument(
        "--cache-dtype", default="float32", help="float32 (default) or bfloat16: how cached features are stored"
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (default: epoch ends)"
    )
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument(
        "--dtype",
        choices=config.DTYPES,
        default="float32",
        help="compute dtype (params, loss and optimizer stay float32); bfloat16 recommended on GPU/TPU",
    )
    p.add_argument(
        "--shard-fc", action="store_true", help="split fc1/fc2 weights and their optimizer state across devices"
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() (auto-detects SLURM/TPU, or use the next three)",
    )
    p.add_argument("--coordinator", help="host:port of process 0, e.g. 127.0.0.1:1234")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--resize", choices=RESIZE_MODES, default="squash")
    p.add_argument(
        "--interpolation",
        default="nearest",
        help="nearest (default: what the recipe's flow_from_directory used) or bilinear (Pillow's, antialiased)",
    )
    p.add_argument(
        "--top",
        default="fc",
        help="fc: fc1/fc2 as in the recipe; avg/max: global pooling; mlp:UNITS[,UNITS...]: new Dense+ReLU+dropout "
        "layers on block5_pool, e.g. mlp:256",
    )
    p.add_argument("--arch", choices=list(DEPTHS), default="vgg16")
    p.add_argument("--widths", help=argparse.SUPPRESS)  # small test variants, e.g. 8,8,16,16,16
    p.add_argument("--fc-units", type=int, help=argparse.SUPPRESS)
    p.add_argument("--log-every", type=int, default=10, help="steps between logged training metrics")


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
    try:
        return args.func(args)
    except UserError as e:
        print(f"vgg-jax: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment (full or read-only disk, permissions) where no UserError names it
        from vgg_jax.fileio import os_reason

        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"vgg-jax: error: {where}{os_reason(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vgg-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
