"""Shared fixtures. Keras runs on its JAX backend; tensorflow stays quiet and off any GPU."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

# The tiny VGG the fast tests use: TrainConfig fields (a vgg11 with narrow convs and fc layers) and the same
# narrow widths as Classifier/VGG fields with one conv per block.
SMALL = {"arch": "vgg11", "widths": (8, 8, 16, 16, 16), "fc_units": 32, "image_size": 32, "batch_size": 8, "lr": 3e-3}
SMALL_NET = {"depths": (1, 1, 1, 1, 1), "widths": (8, 8, 16, 16, 16), "fc_units": 32}


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """One $VGG_JAX_CACHE for the session (a module or test may point it elsewhere), so nothing lands in ~/.cache,
    and jax's persistent compilation cache in its jax/ folder from the first compile on, as the CLI sets it up: the
    small VGG's steps, compiled again by every trainer run in this process and in child processes, are read back."""
    import jax

    folder = tmp_path_factory.mktemp("vgg-jax-cache")
    settings = {"jax_compilation_cache_dir": str(folder / "jax"), "jax_persistent_cache_min_compile_time_secs": 0.1,
                "jax_persistent_cache_min_entry_size_bytes": 0}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VGG_JAX_CACHE", str(folder))
        for name, value in settings.items():
            jax.config.update(name, value)
            mp.setenv(name.upper(), str(value))  # child processes that do not start through the CLI
        yield folder


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """Two random uint8 RGB images at 224x224, the size the ImageNet top needs."""
    return np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def vgg16(images):
    """Keras 3 VGG16 with random weights and its logits/features (built once: about 10 s)."""
    from tests.keras_files import KerasReference

    return KerasReference("vgg16", 1, images)


@pytest.fixture(scope="session")
def vgg19(images):
    from tests.keras_files import KerasReference

    return KerasReference("vgg19", 2, images)


@pytest.fixture(scope="module")
def small_weights_file(tmp_path_factory):
    """A small vgg11 (widths 8,8,16,16,16, fc 32, random, seed 7) with its fc layers as a params file: a stand-in
    for the ImageNet file in trainer tests; the trainer gives the head a fresh init."""
    from vgg_jax.models import params_io
    from vgg_jax.train.config import TrainConfig
    from vgg_jax.models.weights import resolve_weights
    from vgg_jax.train.network import build_model, init_params
    from vgg_jax.train.parallel import to_host

    cfg = TrainConfig(data="unused", out="unused", arch="vgg11", widths=(8, 8, 16, 16, 16), fc_units=32,
                      image_size=32, seed=7)  # fmt: skip
    params = init_params(build_model(cfg, 2), cfg, resolve_weights(None))
    path = tmp_path_factory.mktemp("weights") / "vgg11-small.safetensors"
    params_io.save(path, {k: v for k, v in to_host(params).items() if k != "head"}, {"architecture": "vgg11"})
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder ($VGG_JAX_CACHE) for one test module."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def own_cache(cache, monkeypatch):
    """Points $VGG_JAX_CACHE at the module's cache folder (use with pytest.mark.usefixtures)."""
    monkeypatch.setenv("VGG_JAX_CACHE", str(cache))


def _mount_tmpfs(where, options: str) -> bool:
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


def _umount(where) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _tmpfs(where, options: str):
    """Yields `where` with a tmpfs mounted on it (skips without root), unmounted afterwards."""
    if not _mount_tmpfs(where, options):
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield where
    _umount(where)


@pytest.fixture
def full_dir(tmp_path):
    """A folder on a 64 KiB tmpfs (a full disk for anything bigger). Needs root, as CI and sessions here are."""
    yield from _tmpfs(tmp_path / "full", "size=64k,mode=0777")


@pytest.fixture
def readonly_dir(tmp_path):
    """A read-only folder (a read-only tmpfs: root ignores file permission bits, not a read-only mount)."""
    yield from _tmpfs(tmp_path / "readonly", "size=64k,ro")
