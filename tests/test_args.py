"""Bad values and unwritable outputs are refused before any work, in one line naming the flag or path and the value
received: train (no run folder is created, no weights converted), evaluate, predict and export (no checkpoint is
loaded), classify, and an OSError from the environment anywhere under a command. Small VGG on generated JPEGs."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import errno
import os

import pytest

from tests.conftest import SMALL
from vgg_jax.cli import main
from vgg_jax.data.synthetic import write_folder
from vgg_jax.errors import ConfigError, UserError
from vgg_jax.train.config import TrainConfig

SMALL_ARGS = ["--weights", "random", "--arch", "vgg11", "--widths", "8,8,16,16,16", "--fc-units", "32",
              "--image-size", "32", "--batch-size", "8"]  # fmt: skip
TEST_IMAGES = 3


pytestmark = pytest.mark.usefixtures("own_cache")  # conftest: a cache folder of this module's own


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "dogscats", train=8, valid=4, test=TEST_IMAGES, seed=1)


@pytest.fixture(scope="module")
def run(folder, cache, tmp_path_factory):
    """One tiny trained run (one epoch, head only) for predict and export."""
    from vgg_jax.train.trainer import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(cache))
        train(TrainConfig(data=str(folder), out=str(out), epochs=1, **SMALL))
    return out


def refused(capsys, argv: list[str]) -> tuple[str, str]:
    """Runs the CLI; asserts exit status 2 and exactly one stderr line 'vgg-jax: error: ...'; -> (line, stdout)."""
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("vgg-jax: error: "), (
        f"{argv}: rc {rc}, stderr {captured.err!r}"
    )
    with capsys.disabled():  # shown with -s, kept out of the next readouterr
        print(f"{' '.join(map(str, argv[:1] + argv[-2:]))} -> {lines[0]}")
    return lines[0], captured.out


def fill(where) -> None:
    """Fills the filesystem of `where` (a small tmpfs) until it reports ENOSPC."""
    with open(where / "ballast", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    with pytest.raises(OSError):
        (where / "probe").write_bytes(b"\0" * 4096)


BAD_TRAIN = [
    (["--batch-size", "0"], "--batch-size", "0"),
    (["--batch-size", "-4"], "--batch-size", "-4"),
    (["--eval-batch-size", "0"], "--eval-batch-size", "0"),
    (["--lr", "nan"], "--lr", "nan"),
    (["--lr", "inf"], "--lr", "inf"),
    (["--lr", "0.0"], "--lr", "0.0"),
    (["--lr", "-0.1"], "--lr", "-0.1"),
    (["--momentum", "1.0"], "--momentum", "1.0"),
    (["--momentum", "-0.5"], "--momentum", "-0.5"),
    (["--momentum", "nan"], "--momentum", "nan"),
    (["--epochs", "0"], "--epochs", "0"),
    (["--image-size", "7"], "--image-size", "7"),
    (["--image-size", "31"], "--image-size", "31"),
    (["--dropout", "1.0"], "--dropout", "1.0"),
    (["--dropout", "-0.1"], "--dropout", "-0.1"),
    (["--dropout", "nan"], "--dropout", "nan"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints", "0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every", "-1"),
    (["--warmup-steps", "-1"], "--warmup-steps", "-1"),
    (["--clip-norm", "0.0"], "--clip-norm", "0.0"),
    (["--clip-norm", "inf"], "--clip-norm", "inf"),
    (["--valid-fraction", "0.0"], "--valid-fraction", "0.0"),
    (["--valid-fraction", "1.0"], "--valid-fraction", "1.0"),
    (["--valid-fraction", "nan"], "--valid-fraction", "nan"),
    (["--log-every", "0"], "--log-every", "0"),
    (["--widths", "8,8,0,16,16"], "--widths", "8,8,0,16,16"),
    (["--widths", "8,8,16"], "--widths", "8,8,16"),
    (["--widths", "8,8,x,16,16"], "--widths", "8,8,x,16,16"),
    (["--fc-units", "0"], "--fc-units", "0"),
    (["--seed", "-1"], "--seed", "-1"),
    (["--lr-mult", "conv=nan"], "--lr-mult", "conv=nan"),
    (["--lr-mult", "conv=-1"], "--lr-mult", "conv=-1"),
    (["--top", "mlp:abc"], "--top", "mlp:abc"),
    (["--top", "mlp:0"], "--top", "mlp:0"),
    (["--top", "sum"], "--top", "sum"),
    (["--cache-dtype", "int8"], "--cache-dtype", "int8"),
    (["--interpolation", "cubic"], "--interpolation", "cubic"),
    (["--arch", "vgg15"], "--arch", "vgg15"),
    (["--optimizer", "rmsprop"], "--optimizer", "rmsprop"),
    (["--schedule", "linear"], "--schedule", "linear"),
    (["--resize", "zoom"], "--resize", "zoom"),
    (["--dtype", "float16"], "--dtype", "float16"),
    (["--freeze-through", "fc3"], "--freeze-through", "fc3"),
]


@pytest.mark.parametrize("extra, flag, value", BAD_TRAIN, ids=[" ".join(c[0]) for c in BAD_TRAIN])
def test_train_refuses_bad_value_before_any_work(capsys, folder, tmp_path, extra, flag, value):
    out = tmp_path / "run"
    line, _ = refused(capsys, ["train", "--data", folder, "--out", out, *SMALL_ARGS, *extra])
    assert flag in line and value in line
    assert not out.exists(), f"{extra}: {sorted(p.name for p in out.iterdir())} left in {out}"


def test_train_validates_before_converting_weights(capsys, folder, tmp_path, cache):
    """A Keras file would be converted into the cache; a bad value must stop the command first."""
    keras_file = tmp_path / "vgg11.h5"
    keras_file.write_bytes(b"not HDF5 at all")
    out = tmp_path / "run"
    line, _ = refused(
        capsys, ["train", "--data", folder, "--out", out, *SMALL_ARGS, "--weights", keras_file, "--lr", "nan"]
    )
    assert "--lr" in line and "nan" in line
    assert not out.exists() and not (cache / "converted").exists()


def test_python_train_validates_before_touching_the_folder(folder, tmp_path):
    from vgg_jax.train.trainer import train

    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"^lr must be finite and > 0\. Received: nan$"):
        train(TrainConfig(data=str(folder), out=str(out), **{**SMALL, "lr": float("nan")}))
    assert not out.exists()


BAD_CONFIG = [
    ("arch", "vgg15"),
    ("optimizer", "rmsprop"),
    ("schedule", "linear"),
    ("resize", "zoom"),
    ("top", "mean"),
    ("dtype", "float16"),
    ("freeze_through", "fc3"),
    ("batch_size", 2.5),
    ("batch_size", True),
    ("lr", "0.1"),
    ("widths", (8, 8, 16, 16, 16, 16)),
    ("out", ""),
]


@pytest.mark.parametrize("field, value", BAD_CONFIG, ids=[f"{f}={v!r}" for f, v in BAD_CONFIG])
def test_config_refuses_values_the_cli_cannot_send(folder, tmp_path, field, value):
    """The library names the field, not a flag; the error is a UserError and so a ValueError."""
    cfg = dataclasses.replace(TrainConfig(data=str(folder), out=str(tmp_path / "run"), **SMALL), **{field: value})
    with pytest.raises(ConfigError, match=f"^{field} ") as e:
        cfg.validate()
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError) and e.value.field == field
    assert "Received:" in str(e.value) and "\n" not in str(e.value) and "--" not in str(e.value)


def test_valid_config_passes(folder, tmp_path):
    TrainConfig(data=str(folder), out=str(tmp_path / "run"), **SMALL).validate()
    TrainConfig(data=str(folder), out=str(tmp_path / "run")).validate()  # the recipe's defaults


def test_train_out_is_a_file(capsys, folder, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a folder")
    line, _ = refused(capsys, ["train", "--data", folder, "--out", out, *SMALL_ARGS])
    assert str(out) in line and "not a folder" in line
    assert out.read_text() == "not a folder"


def test_train_out_below_a_file(capsys, folder, tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    line, _ = refused(capsys, ["train", "--data", folder, "--out", out, *SMALL_ARGS])
    assert str(out) in line and "not a folder" in line


def test_train_out_read_only(capsys, folder, readonly_dir):
    out = readonly_dir / "run"
    line, _ = refused(capsys, ["train", "--data", folder, "--out", out, *SMALL_ARGS])
    assert str(out) in line and "read-only file system" in line


def test_train_out_on_full_disk(capsys, folder, full_dir):
    fill(full_dir)
    out = full_dir / "run"
    line, _ = refused(capsys, ["train", "--data", folder, "--out", out, *SMALL_ARGS])
    assert str(out) in line and "no space left on device" in line
    assert not out.exists()


def test_evaluate_batch_size(capsys, tmp_path):
    line, _ = refused(capsys, ["evaluate", tmp_path / "no-run", "--batch-size", "0"])
    assert "--batch-size" in line and "Received: 0" in line


@pytest.mark.parametrize(
    "extra, flag, value",
    [
        (["--batch-size", "0"], "--batch-size", "0"),
        (["--batch-size", "-2"], "--batch-size", "-2"),
        (["--clip", "0.5"], "--clip", "0.5"),
        (["--clip", "-0.1"], "--clip", "-0.1"),
        (["--clip", "nan"], "--clip", "nan"),
    ],
)
def test_predict_bad_value(capsys, run, folder, extra, flag, value):
    line, out = refused(capsys, ["predict", run, folder / "test1", *extra])
    assert flag in line and f"Received: {value}" in line
    assert "checkpoint step" not in out


def csv_targets(tmp_path, readonly_dir, full_dir) -> dict:
    """Unwritable outputs and the words their message must hold."""
    fill(full_dir)
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    return {
        readonly_dir / "out.x": "read-only file system",
        full_dir / "out.x": "no space left on device",
        tmp_path / "file" / "out.x": "not a folder",
        tmp_path / "folder": "is a folder; give a file name",
        "/proc/vgg-jax-test/out.x": "cannot write",
    }


def test_predict_unwritable_csv_before_loading(capsys, run, folder, tmp_path, readonly_dir, full_dir):
    for target, words in csv_targets(tmp_path, readonly_dir, full_dir).items():
        line, out = refused(capsys, ["predict", run, folder / "test1", "--csv", target])
        assert str(target) in line and "CSV" in line and words in line, (target, line)
        assert "checkpoint step" not in out, f"{target}: the checkpoint was loaded before the CSV was checked"


def test_export_unwritable_output_before_loading(capsys, run, tmp_path, readonly_dir, full_dir):
    for target, words in csv_targets(tmp_path, readonly_dir, full_dir).items():
        line, out = refused(capsys, ["export", run, "-o", target, "--format", "params"])
        assert str(target) in line and "params file" in line and words in line, (target, line)
        assert "checkpoint step" not in out, f"{target}: the checkpoint was loaded before the output was checked"


def test_export_runs_out_of_space_while_writing(capsys, run, full_dir):
    """Room for the up-front probe but not for the params: one line, and no temp file left (safetensors' own
    writer would raise SafetensorError and leave a .tmpXXXX)."""
    (full_dir / "ballast").write_bytes(b"\0" * 40 * 1024)
    target = full_dir / "model.safetensors"
    line, _ = refused(capsys, ["export", run, "-o", target])
    assert str(target) in line and "no space left on device" in line
    assert os.listdir(full_dir) == ["ballast"]


def test_predict_creates_missing_csv_folders(capsys, run, folder, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "submission.csv"
    assert main(["predict", str(run), str(folder / "test1"), "--csv", str(target)]) == 0
    with open(target, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"] and len(rows) == 1 + TEST_IMAGES


def test_classify_top(capsys, tmp_path):
    line, _ = refused(capsys, ["classify", tmp_path / "x.jpg", "--weights", tmp_path / "w.safetensors", "--top", "0"])
    assert "--top" in line and "Received: 0" in line


def test_environmental_oserror_is_one_line(capsys, readonly_dir):
    """demo creates its --out folder with a plain mkdir: EROFS reaches main(), which names the path."""
    out = readonly_dir / "demo"
    line, _ = refused(capsys, ["demo", "--out", out, "--offline"])
    assert str(out) in line and "read-only file system" in line
    assert os.listdir(readonly_dir) == []


# CLI habits (issue 10 item 6): abbreviations refused, defaults in --help, --lr-mult on a frozen group, run.json.


@pytest.mark.parametrize(
    "argv", [["train", "--data", "d", "--out", "o", "--epoch", "2"], ["convert", "x.h5", "--out", "y.safetensors"]]
)
def test_abbreviated_flag_is_refused(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"unrecognized arguments: {argv[-2]}" in err, err


def test_python_m_convert_refuses_abbreviations(capsys):
    from vgg_jax.convert.cli import main as convert_main

    with pytest.raises(SystemExit):
        convert_main(["x.h5", "--out", "y.safetensors"])
    assert "unrecognized arguments: --out" in capsys.readouterr().err


def test_every_help_shows_defaults():
    """Every option that takes a value and has a default states it in --help; suppressed flags stay hidden."""
    import argparse

    from vgg_jax.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, parser in sub.choices.items():
        text = " ".join(parser.format_help().split())  # one line: wrapping does not split the check
        assert parser.allow_abbrev is False, name
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                assert action.option_strings[0] not in text, f"{name}: {action.option_strings[0]} shown"
            elif action.option_strings and action.nargs != 0 and action.default is not None:
                checked += 1
                assert f"(default: {action.default})" in text or "default" in (action.help or ""), (
                    f"{name} {action.option_strings[-1]}: default {action.default!r} not in --help"
                )
    assert checked > 20 and "(default: imagenet)" in " ".join(sub.choices["train"].format_help().split())


def test_lr_mult_on_a_frozen_group_names_it(capsys, folder, tmp_path):
    out = tmp_path / "run"
    line, _ = refused(capsys, ["train", "--data", folder, "--out", out, *SMALL_ARGS, "--freeze-through", "fc2",
                               "--lr-mult", "block3=0.1"])  # fmt: skip
    assert line == (
        "vgg-jax: error: --lr-mult block3=0.1: block3 is frozen by --freeze-through fc2; drop it or freeze less"
    )
    assert not out.exists(), "a refused run must not leave a folder"


def test_lr_mult_on_partly_trainable_alias_is_accepted():
    from vgg_jax.models.freeze import parse_lr_mults

    assert parse_lr_mults("conv=0.5", "block3") == {f"block{i}": 0.5 for i in range(1, 6)}
    with pytest.raises(UserError, match="`lr_mult=fc=0.5`: fc is frozen by `freeze_through=fc2`"):
        parse_lr_mults("head=2,fc=0.5", "fc2")


def test_run_json_records_versions_command_times_and_best(folder, tmp_path, monkeypatch):
    import datetime
    import json
    import sys

    out = tmp_path / "run"
    argv = ["train", "--data", str(folder), "--out", str(out), *SMALL_ARGS, "--epochs", "2", "--seed", "3"]
    monkeypatch.setattr(sys, "argv", ["vgg-jax", *argv])
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    assert main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    for package in ("vgg_jax", "jax", "jaxlib", "flax", "optax", "orbax"):
        assert isinstance(info["versions"][package], str) and info["versions"][package], (package, info["versions"])
    assert info["command"] == ["vgg-jax", *argv]
    started, ended = (datetime.datetime.fromisoformat(info[k]) for k in ("started", "ended"))
    assert started.utcoffset() == datetime.timedelta(0) and before <= started <= ended, (before, started, ended)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["kind"] == "valid"]
    best = min(valid, key=lambda r: r["loss"])
    assert len(valid) == 2 and info["best_valid"] == {k: best[k] for k in ("loss", "accuracy", "step", "epoch")}, (
        info["best_valid"], valid, "seed 3")  # fmt: skip


# The train command is generated from TrainConfig's fields (vgg_jax.train.config.option): flags, help, defaults,
# parsing and the field -> flag naming of errors.

# `vgg-jax train`'s flags when they were written out one by one in cli.py: none may go missing.
TRAIN_FLAGS = {
    "--data", "--out", "--weights", "--epochs", "--batch-size", "--eval-batch-size", "--lr", "--optimizer",
    "--momentum", "--schedule", "--warmup-steps", "--clip-norm", "--freeze-through", "--lr-mult", "--dropout",
    "--augment", "--seed", "--valid-fraction", "--labels-from-filename", "--tfds-manual-dir", "--cache-features",
    "--no-cache-features", "--cache-dtype", "--checkpoint-every", "--keep-checkpoints", "--resume", "--overwrite",
    "--dtype", "--shard-fc", "--distributed", "--coordinator", "--num-processes", "--process-id", "--image-size",
    "--resize", "--interpolation", "--top", "--arch", "--widths", "--fc-units", "--log-every",
}  # fmt: skip

# A value other than the default for every field with a flag, and the flags that spell it.
EVERY_FIELD = {
    "data": "d", "out": "o", "weights": "random", "arch": "vgg11", "widths": (8, 8, 16, 16, 16), "fc_units": 32,
    "top": "mlp:64", "image_size": 64, "resize": "pad", "interpolation": "bilinear", "epochs": 3, "batch_size": 16,
    "eval_batch_size": 4, "optimizer": "sgd", "lr": 0.01, "momentum": 0.8, "schedule": "cosine", "warmup_steps": 5,
    "clip_norm": 1.5, "freeze_through": "block4", "lr_mult": "conv=0.1", "dropout": 0.25, "augment": True, "seed": 7,
    "valid_fraction": 0.2, "labels_from_filename": "^(a|b)", "tfds_manual_dir": "m", "cache_features": True,
    "cache_dtype": "bfloat16", "checkpoint_every": 100, "keep_checkpoints": 2, "dtype": "bfloat16",
    "shard_fc": True, "log_every": 5,
}  # fmt: skip


def train_parser() -> argparse.ArgumentParser:
    from vgg_jax.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def parsed_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig `vgg-jax train ARGV` would train (not validated)."""
    from vgg_jax.cli import _train_config, build_parser

    return _train_config(build_parser().parse_args(["train", *argv]))


def flag_of(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def test_train_keeps_every_flag():
    flags = {s for a in train_parser()._actions for s in a.option_strings}
    assert flags == TRAIN_FLAGS | {"-h", "--help"}, (flags - TRAIN_FLAGS, TRAIN_FLAGS - flags)


def test_train_help_shows_each_field_with_its_dataclass_default_and_choices():
    parser = train_parser()
    actions = {}
    for action in parser._actions:  # a --X/--no-X pair: the first, --X, carries the field's help
        actions.setdefault(action.dest, action)
    for field in dataclasses.fields(TrainConfig):
        facts, action = field.metadata, actions[field.name]
        formatter = parser._get_formatter()
        formatter.add_argument(action)
        shown = " ".join(formatter.format_help().split())
        if facts["hidden"]:
            assert action.help == argparse.SUPPRESS and flag_of(field) not in parser.format_help(), field.name
            continue
        assert shown.startswith(flag_of(field)) and facts["help"].split()[0] in shown, (field.name, shown)
        default = facts.get("cli_default", field.default)
        if default not in (None, False, dataclasses.MISSING):
            assert f"(default: {default})" in shown, (field.name, shown)
        if facts["choices"]:
            assert "{" + ",".join(facts["choices"]) + "}" in shown, (field.name, shown)
    fields = dataclasses.fields(TrainConfig)
    cli_defaults = {f.name: f.metadata["cli_default"] for f in fields if "cli_default" in f.metadata}
    assert cli_defaults == {"weights": "imagenet"}, "the command's one default that is not the library's"


def test_train_without_options_is_the_dataclass_defaults():
    assert parsed_config(["--data", "d", "--out", "o"]) == dataclasses.replace(
        TrainConfig(data="d", out="o"), weights="imagenet"
    )


def test_every_flag_reaches_its_field():
    """A value other than the default for every field, given by its flag, arrives (a dropped flag would not)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(EVERY_FIELD) == set(fields)
    argv = []
    for name, value in EVERY_FIELD.items():
        assert value != fields[name].default, name
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        argv += [flag_of(fields[name])] if value is True else [flag_of(fields[name]), text]
    cfg = parsed_config(argv)
    assert cfg == TrainConfig(**EVERY_FIELD)
    cfg.validate()


def test_tri_state_switch(capsys):
    assert parsed_config(["--data", "d", "--out", "o"]).cache_features is None  # the library decides
    assert parsed_config(["--data", "d", "--out", "o", "--cache-features"]).cache_features is True
    assert parsed_config(["--data", "d", "--out", "o", "--no-cache-features"]).cache_features is False
    with pytest.raises(SystemExit):
        parsed_config(["--data", "d", "--out", "o", "--cache-features", "--no-cache-features"])
    assert "not allowed with argument" in capsys.readouterr().err


NAMED = [
    ("batch_size", ["--batch-size", "0"], "must be an integer >= 1. Received: 0"),
    ("eval_batch_size", ["--eval-batch-size", "-1"], "must be an integer >= 1. Received: -1"),
    ("arch", ["--arch", "vgg15"], "must be one of vgg11, vgg13, vgg16, vgg19. Received: 'vgg15'"),
    ("labels_from_filename", ["--labels-from-filename", "cat"],
     "needs a group around the label, e.g. '^(cat|dog)\\.'. Received: 'cat'"),
    ("widths", ["--widths", "8,8,x,16,16"],
     "expects comma-separated integers, e.g. 8,8,16,16,16. Received: '8,8,x,16,16'"),
]  # fmt: skip


@pytest.mark.parametrize("field, extra, problem", NAMED, ids=[n[0] for n in NAMED])
def test_library_names_the_field_and_cli_the_flag(capsys, folder, tmp_path, field, extra, problem):
    with pytest.raises(ConfigError) as e:
        parsed_config(["--data", str(folder), "--out", str(tmp_path / "run"), *extra]).validate()
    assert (str(e.value), e.value.field) == (f"{field} {problem}", field)
    line, _ = refused(capsys, ["train", "--data", folder, "--out", tmp_path / "run", *extra])
    assert line == f"vgg-jax: error: {extra[0]} {problem}"
    assert not (tmp_path / "run").exists()


def test_each_command_words_the_library_settings_as_its_flags():
    """The library writes `name` or `name=value`; a command's parser turns each into its own flag, a switch's
    value picks the switch, and a setting the command has no flag for keeps the library's words."""
    from vgg_jax.cli import build_parser

    commands = build_parser().commands
    said = "`cache_features=False`; `freeze_through=fc2` leaves `lr` and `weights=random`; `labels_from_filename='^(a)'`"
    assert commands["train"].flag_words(said) == (
        "--no-cache-features; --freeze-through fc2 leaves --lr and --weights random; --labels-from-filename '^(a)'"
    )
    assert commands["train"].flag_words("`cache_features=True`, `augment=True`") == "--cache-features, --augment"
    assert commands["evaluate"].flag_words("pass `weights`; `top_losses` must be") == "pass `weights`; --top-losses must be"
    assert commands["convert"].flag_words("`kernels=theano` or `fc1_order=chw`") == "--kernels theano or --fc1-order chw"


def test_a_library_refusal_reads_as_flags_on_the_command_line(tmp_path, capsys):
    """One message, two readers: the library's UserError names the setting, the CLI's line the flag."""
    from vgg_jax.models.freeze import parse_lr_mults

    with pytest.raises(UserError, match=r"^`lr_mult=block3=0.1`: block3 is frozen by `freeze_through=fc2`; "):
        parse_lr_mults("block3=0.1", "fc2")
    folder = write_folder(tmp_path / "data", train=4, valid=2, test=0, size=(40, 40), seed=0)
    code = main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--weights", "random",
                 "--lr-mult", "block3=0.1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vgg-jax: error: --lr-mult block3=0.1: block3 is frozen by --freeze-through fc2; ")
