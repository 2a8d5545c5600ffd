"""Imports run one way: every `vgg_jax` module imports only its own layer's package or the layers below it.

Layers, bottom up (docs/DESIGN.md draws the same picture):
  0 base       errors, fileio, faults, paths, log: the standard library only
  1 formats    models.arch, models.params_io: pure Python + numpy/safetensors (the converter's view of a model)
  2 convert    Keras files -> params files: numpy, h5py; never jax
  3 models, data   the Flax modules and weights; the input pipeline (neither imports the other)
  4 train      setup, steps, sharding, checkpoints, the run folder, the trainer
  5 inference  evaluate, predict, Predictor, report, export
  6 surface    the package's lazy __init__, api (the Keras-shaped factories), cli, demo

Function-level (lazy) imports count too: a lazy import against the direction is still a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vgg_jax"
BASE = ("vgg_jax.errors", "vgg_jax.fileio", "vgg_jax.faults", "vgg_jax.paths", "vgg_jax.log")
FORMATS = ("vgg_jax.models.arch", "vgg_jax.models.params_io")
# The command lines are surface too, `python -m vgg_jax.convert`'s included (its parity check runs the Flax model).
SURFACE = ("vgg_jax", "vgg_jax.api", "vgg_jax.cli", "vgg_jax.demo", "vgg_jax.__main__", "vgg_jax.convert.cli",
           "vgg_jax.convert.__main__")  # fmt: skip
LAYERS = [
    ("base", BASE),
    ("formats", FORMATS),
    ("convert", ("vgg_jax.convert",)),
    ("models", ("vgg_jax.models",)),
    ("data", ("vgg_jax.data",)),
    ("train", ("vgg_jax.train",)),
    ("inference", ("vgg_jax.inference",)),
    ("surface", SURFACE),
]
RANK = {"base": 0, "formats": 1, "convert": 2, "models": 3, "data": 3, "train": 4, "inference": 5, "surface": 6}
NO_JAX = {"base", "formats", "convert"}  # the converter runs where jax is not installed


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The most specific layer whose prefixes name `module` (models.arch is `formats`, models.vgg `models`)."""
    best, length = None, -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            exact = prefix in BASE + FORMATS + SURFACE
            hit = module == prefix or (not exact and module.startswith(prefix + "."))
            if hit and len(prefix) > length:
                best, length = name, len(prefix)
    assert best is not None, f"{module}: in no layer; add it to LAYERS in {__file__}"
    return best


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every import in the source, top-level and inside functions alike."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from vgg_jax.models import arch` imports the module vgg_jax.models.arch (and runs the package's
            # __init__, which is no dependency on the package's other modules); `from vgg_jax.x import f`, vgg_jax.x.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return sorted(set(found))


def resolve(name: str) -> str | None:
    """The vgg_jax module an imported name refers to (a module, or the module holding the name); None outside."""
    if name != "vgg_jax" and not name.startswith("vgg_jax."):
        return None
    parts = name.split(".")
    for k in range(len(parts), 1, -1):
        candidate = ".".join(parts[:k])
        rel = Path(*parts[:k])
        if (ROOT.parent / rel).with_suffix(".py").is_file() or (ROOT.parent / rel / "__init__.py").is_file():
            return candidate
    return "vgg_jax"


SOURCES = sorted(ROOT.rglob("*.py"))


def violations(source: str, me: str, is_package: bool = False) -> list[str]:
    """Each import in `source` (module `me`) that goes against the direction, as 'line N: what'."""
    mine = layer_of(me)
    wrong = []
    for line, name in imports_of(source, me, is_package):
        top = name.split(".")[0]
        if mine in NO_JAX and top in ("jax", "flax", "optax", "orbax", "tensorflow", "grain"):
            wrong.append(f"line {line}: {name} (the {mine} layer runs without jax)")
        target = resolve(name)
        if target is None or target == me or target == "vgg_jax" and name == "vgg_jax":
            continue
        theirs = layer_of(target)
        if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine] and theirs != mine):
            wrong.append(f"line {line}: {target} ({theirs}) from the {mine} layer")
    return wrong


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_run_one_way(path: Path):
    me = module_name(path)
    wrong = violations(path.read_text(), me, path.name == "__init__.py")
    assert not wrong, f"{me} imports against the direction:\n  " + "\n  ".join(wrong)


def test_every_module_is_in_a_layer():
    """A new module must be placed: layer_of fails for one that no prefix names."""
    assert {layer_of(module_name(p)) for p in SOURCES} == set(RANK)


def test_the_direction_check_catches_wrong_imports():
    """The check can fail: upward, sideways, relative and jax-in-the-converter imports are each reported."""
    lazy_upward = "def f():\n    from vgg_jax.train.trainer import train\n"
    assert violations(lazy_upward, "vgg_jax.models.vgg") == ["line 2: vgg_jax.train.trainer (train) from the models layer"]
    sideways = "from vgg_jax.data import resize\n"
    assert violations(sideways, "vgg_jax.models.vgg") == ["line 1: vgg_jax.data.resize (data) from the models layer"]
    relative = "from ..inference import predictor\n"
    assert violations(relative, "vgg_jax.train.step") == [
        "line 1: vgg_jax.inference.predictor (inference) from the train layer"
    ]
    assert violations("import jax.numpy as jnp\n", "vgg_jax.convert.mapping") == [
        "line 1: jax.numpy (the convert layer runs without jax)"
    ]
    assert violations("from vgg_jax.models import arch\n", "vgg_jax.convert.mapping") == []


def _flag_words_in_messages(source: str) -> list[str]:
    """Literal text with a --flag inside a `raise ...Error(...)` or a `say(...)`: what a library user would read."""
    found = []
    for node in ast.walk(ast.parse(source)):
        calls = []
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            calls.append(node.exc)
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "say":
            calls.append(node)
        for call in calls:
            for part in ast.walk(call):
                if isinstance(part, ast.Constant) and isinstance(part.value, str) and _bare_flag(part.value):
                    found.append(f"line {part.lineno}: {part.value.strip()[:80]!r}")
    return found


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _bare_flag(text: str) -> bool:
    """A --flag not part of a quoted command (`vgg-jax train --out` names the command, not a setting)."""
    return any("vgg-jax " not in text[: m.start()] for m in FLAG.finditer(text))
LIBRARY = [p for p in SOURCES if layer_of(module_name(p)) != "surface"]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_only_the_command_line_speaks_of_flags(path: Path):
    """The library names a setting as `name` or `name=value`; each command's parser words it as its flag."""
    found = _flag_words_in_messages(path.read_text())
    assert not found, f"{module_name(path)} names command-line flags:\n  " + "\n  ".join(found)


def test_the_flag_check_catches_a_flag_in_a_message():
    assert _flag_words_in_messages('raise UserError(f"{x}: pass --weights random")\n') == [
        "line 1: ': pass --weights random'"
    ]
    assert _flag_words_in_messages('say("use `weights=random`")\n') == []
    assert _flag_words_in_messages('raise UserError("made by `vgg-jax train --out`")\n') == []
