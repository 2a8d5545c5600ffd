"""Hostile and damaged inputs to `vgg-jax convert`: files that read other files, zip bombs, non-float and
non-finite weights, unwritable outputs, kills mid-write. Each gives one line (or is cleaned up next run).

Sources are real HDF5 files: Keras 1 layout written by convert.legacy (VGG11/VGG16 no-top, 37/59 MB) and
.keras archives written by Keras 3 itself, edited with h5py/zipfile where the attack needs it."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from vgg_jax.convert import archive, convert_file, download, legacy, load_keras
from vgg_jax.models import arch, params_io
from vgg_jax.errors import UserError
from vgg_jax.fileio import TEMP_PREFIX

KERNEL = "block2_conv1/block2_conv1_W_1:0"  # a Keras 1 dataset path: (3, 3, 64, 128) float32


def run_cli(*args, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "VGG_JAX_FAULT"} | env
    return subprocess.run(
        [sys.executable, "-m", "vgg_jax", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("vgg-jax: error: "), result.stderr
    return lines[0]


def temps(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture(scope="module")
def vgg11_params() -> dict:
    return legacy.random_params(arch.DEPTHS["vgg11"], include_top=False, seed=11)


@pytest.fixture(scope="module")
def vgg11_file(vgg11_params, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "vgg11_notop.h5"
    legacy.write_keras1(path, vgg11_params, "tf")
    return path


@pytest.fixture
def src(vgg11_file, tmp_path) -> Path:
    """A private copy of the VGG11 file, for a test to damage."""
    return Path(shutil.copy(vgg11_file, tmp_path / "vgg11.h5"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VGG_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def replace_dataset(path: Path, name: str, make) -> None:
    """Deletes dataset `name` and lets make(group, key) put something else there."""
    with h5py.File(path, "r+") as f:
        group, key = name.rsplit("/", 1)
        del f[group][key]
        make(f[group], key)


# ---- HDF5 files that read other files -------------------------------------------------------------------


def external_storage(tmp_path: Path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(3 * 3 * 64 * 128, dtype=np.float32).tobytes())
    make = lambda g, k: g.create_dataset(k, (3, 3, 64, 128), np.float32, external=[(str(secret), 0, 294912)])
    return make, f"dataset '{KERNEL}' reads another file (external storage: {secret})"


def external_link(tmp_path: Path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.ones((3, 3, 64, 128), np.float32)
    make = lambda g, k: g.__setitem__(k, h5py.ExternalLink(str(other), "/data"))
    return make, f"link '{KERNEL}' reads another file (external link to {other}:/data)"


def virtual_dataset(tmp_path: Path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.ones((3, 3, 64, 128), np.float32)
    layout = h5py.VirtualLayout((3, 3, 64, 128), np.float32)
    layout[...] = h5py.VirtualSource(str(other), "data", (3, 3, 64, 128))
    make = lambda g, k: g.create_virtual_dataset(k, layout)
    return make, f"dataset '{KERNEL}' reads another file (virtual dataset over {other})"


@pytest.mark.slow
@pytest.mark.parametrize("attack", [external_storage, external_link, virtual_dataset])
def test_hdf5_reading_another_file_is_refused(src, tmp_path, attack):
    make, message = attack(tmp_path)
    replace_dataset(src, KERNEL, make)
    out = tmp_path / "out"
    line = one_line(run_cli(src, "-o", out / "x.safetensors"))
    assert line == f"vgg-jax: error: {src}: {message}; refused", line
    assert not out.exists() or not list(out.iterdir())


# ---- weights that are not floating point, or not finite -------------------------------------------------


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "uint8"])
def test_non_float_weights_are_refused_up_front(src, tmp_path, dtype):
    replace_dataset(src, KERNEL, lambda g, k: g.create_dataset(k, data=np.ones((3, 3, 64, 128), dtype)))
    with pytest.raises(UserError) as e:
        convert_file(src, tmp_path / "x.safetensors")
    assert str(e.value) == f"{src}: dataset '{KERNEL}' holds {dtype} values, not floating-point weights; refused"
    assert not (tmp_path / "x.safetensors").exists()


def test_float16_weights_are_widened_exactly(src, vgg11_params, tmp_path):
    """float16 (a Keras 'float16' dtype policy) converts: every float16 is a float32, so nothing is lost."""
    with h5py.File(src, "r+") as f:
        for name in list(f.attrs["layer_names"]):
            for w in f[name].attrs["weight_names"]:
                value = f[name][w][()]
                del f[name][w]
                f[name].create_dataset(w, data=value.astype(np.float16))
    params, report = load_keras(src)
    assert "float16 weights widened to float32 (exact)" in report.transforms, report.transforms
    for layer, values in vgg11_params.items():
        for kind, value in values.items():
            np.testing.assert_array_equal(params[layer][kind], value.astype(np.float16).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize(
    "values, count",
    [({(0, 0, 0, 0): np.nan, (1, 2, 3, 4): np.nan, (2, 2, 63, 127): np.inf}, 3), ({(0, 1, 2, 3): 1e300}, 1)],
    ids=["nan-and-inf", "float64-beyond-float32"],
)
def test_non_finite_weights_are_refused(src, tmp_path, values, count):
    with h5py.File(src, "r+") as f:
        kernel = f[KERNEL][()].astype(np.float64)
        for index, value in values.items():
            kernel[index] = value
        del f[KERNEL]
        f[KERNEL] = kernel
    line = one_line(run_cli(src, "-o", tmp_path / "x.safetensors"))
    assert f"{src}: dataset '{KERNEL}' holds {count} NaN or infinite value(s) in float32 (of 73,728)" in line, line
    assert not (tmp_path / "x.safetensors").exists() and not temps(tmp_path)


# ---- .keras archives read with limits -------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_notop(tmp_path_factory):
    """A real Keras 3 VGG16 no-top (32x32 input) with random weights, saved as .keras and .weights.h5."""
    import keras

    from tests.keras_files import canonical_params, randomize

    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    randomize(model, seed=16)
    folder = tmp_path_factory.mktemp("keras3")
    model.save(str(folder / "vgg16.keras"))
    model.save_weights(str(folder / "vgg16.weights.h5"))
    return folder, canonical_params(model)


def rezip(src: Path, dst: Path, compression: int = zipfile.ZIP_STORED, edit_weights=None) -> Path:
    """Copies a .keras archive member by member, optionally editing model.weights.h5 with h5py on the way."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression, compresslevel=1) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == archive.WEIGHTS and edit_weights:
                scratch = dst.with_name("scratch.h5")
                scratch.write_bytes(data)
                with h5py.File(scratch, "r+") as f:
                    edit_weights(f)
                data = scratch.read_bytes()
                scratch.unlink()
            zout.writestr(info.filename, data)
    return dst


def strip_names(f: h5py.File) -> None:
    """Deletes the `name` attribute Keras 3 writes on each layer's vars group (older Keras 3 did not)."""
    f.visititems(lambda name, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)


def assert_params_equal(params: dict, want: dict) -> None:
    assert set(params) == set(want)
    for layer, values in want.items():
        for kind, value in values.items():
            np.testing.assert_array_equal(params[layer][kind], value, err_msg=f"{layer}/{kind}")


def test_keras_archive_without_name_attributes_maps_by_config_json(keras_notop, tmp_path, cache):
    folder, want = keras_notop
    stripped = rezip(folder / "vgg16.keras", tmp_path / "stripped.keras", edit_weights=strip_names)
    with zipfile.ZipFile(stripped) as zf, h5py.File(zf.open(archive.WEIGHTS)) as f:
        assert "name" not in f["layers/conv2d/vars"].attrs  # the attack took hold
    params, report = load_keras(stripped)
    assert report.names_from == "config.json" and "by Keras layer name, from config.json" in str(report), str(report)
    assert_params_equal(params, want)


def test_weights_h5_without_name_attributes_maps_by_order(keras_notop, tmp_path):
    folder, want = keras_notop
    path = Path(shutil.copy(folder / "vgg16.weights.h5", tmp_path / "stripped.weights.h5"))
    with h5py.File(path, "r+") as f:
        strip_names(f)
    params, report = load_keras(path)
    assert report.names_from == "order" and "layers/conv2d -> block1_conv1" in str(report), str(report)
    assert_params_equal(params, want)


@pytest.fixture(scope="module")
def deflated(keras_notop) -> Path:
    """The same archive with its members deflated (Keras stores them; a re-zipped copy may not)."""
    folder, _ = keras_notop
    return rezip(folder / "vgg16.keras", folder / "deflated.keras", zipfile.ZIP_DEFLATED)


def test_deflated_keras_archive_is_extracted_and_removed(keras_notop, deflated, cache):
    _, want = keras_notop
    params, _ = load_keras(deflated)
    assert_params_equal(params, want)
    assert not temps(archive.extract_dir()) and list(archive.extract_dir().iterdir()) == []


def patch_declared_size(path: Path, member: str, size: int) -> None:
    """Rewrites the uncompressed size a zip's central directory declares for `member` (what zipfile trusts)."""
    data = bytearray(path.read_bytes())
    offset = data.index(b"PK\x01\x02")
    while data[offset + 46 : offset + 46 + len(member)] != member.encode():
        offset = data.index(b"PK\x01\x02", offset + 4)
    struct.pack_into("<I", data, offset + 24, size)
    path.write_bytes(bytes(data))


def zero_bomb(path: Path, size: int) -> Path:
    """A .keras-shaped zip whose model.weights.h5 is `size` zero bytes, deflated (about 1000:1)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("config.json", "{}")
        with zf.open(archive.WEIGHTS, "w") as f:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
    return path


@pytest.mark.slow
def test_zip_declaring_3_gib_is_refused_before_reading(tmp_path, cache):
    bomb = zero_bomb(tmp_path / "bomb.keras", 1 << 20)
    patch_declared_size(bomb, archive.WEIGHTS, 3 << 30)
    assert bomb.stat().st_size < 10_000
    line = one_line(run_cli(bomb, "-o", tmp_path / "x.safetensors"))
    assert f"{bomb}: archive members declare 3.0 GiB uncompressed (model.weights.h5: 3.0 GiB)" in line, line
    assert "over the 2.0 GiB limit" in line and not (cache / "extract").exists()


def test_small_zip_bomb_is_refused(tmp_path, cache, monkeypatch):
    """A real bomb (64 MiB of zeros in a 64 KB zip) against a cap lowered to 16 MiB, so the test stays fast."""
    monkeypatch.setattr(archive, "SIZE_CAP", 16 << 20)
    bomb = zero_bomb(tmp_path / "bomb.keras", 64 << 20)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(UserError, match="archive members declare 0.1 GiB uncompressed"):
        load_keras(bomb)
    assert not (cache / "extract").exists()


@pytest.mark.slow
def test_member_that_lies_about_its_size_stops_at_the_declared_size(tmp_path, cache):
    bomb = zero_bomb(tmp_path / "liar.keras", 64 << 20)
    patch_declared_size(bomb, archive.WEIGHTS, 1 << 20)  # says 1 MiB, inflates to 64 MiB
    line = one_line(run_cli(bomb, "-o", tmp_path / "x.safetensors"))
    assert f"{bomb}: corrupt .keras archive (Bad CRC-32" in line, line
    assert list((cache / "extract").iterdir()) == []


# ---- the output: unwritable, full, or killed mid-write --------------------------------------------------


@pytest.mark.slow
def test_readonly_output_folder(src, readonly_dir):
    line = one_line(run_cli(src, "-o", readonly_dir / "x.safetensors"))
    assert line.startswith(f"vgg-jax: error: {readonly_dir / 'x.safetensors'}: cannot write the params file here ("), (
        line
    )
    assert "read-only file system" in line, line


@pytest.mark.slow
def test_full_disk_is_refused_before_reading(src, full_dir):
    line = one_line(run_cli(src, "-o", full_dir / "x.safetensors"))
    assert f"{full_dir / 'x.safetensors'}: not enough space (" in line and "needs 36.9 MB" in line, line
    assert list(full_dir.iterdir()) == []


def test_disk_filling_up_during_the_write(src, full_dir, monkeypatch):
    """Past the room check (skipped here, as if another writer filled the disk meanwhile): one line, no file."""
    from vgg_jax import convert

    monkeypatch.setattr(convert, "check_space", lambda out, shapes: None)
    with pytest.raises(UserError) as e:
        convert_file(src, full_dir / "x.safetensors")
    assert str(e.value) == f"{full_dir / 'x.safetensors'}: cannot write (no space left on device)"
    assert list(full_dir.iterdir()) == []


@pytest.mark.slow
def test_output_in_proc(src):
    line = one_line(run_cli(src, "-o", "/proc/x.safetensors"))
    assert line.startswith("vgg-jax: error: /proc/x.safetensors: cannot write the params file here ("), line


@pytest.mark.slow
def test_killed_convert_leaves_nothing_after_the_next_run(src, tmp_path, cache):
    """Killed while writing the output: the next convert, even one that fails, removes the dead writer's temp."""
    out = tmp_path / "out" / "x.safetensors"
    killed = run_cli(src, "-o", out, VGG_JAX_FAULT="params-write@2", VGG_JAX_CACHE=str(cache))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = temps(out.parent)
    assert len(left) == 1 and left[0].stat().st_size > 0 and not out.exists(), left  # killed mid-write
    not_hdf5 = tmp_path / "not.h5"
    not_hdf5.write_text("404")
    assert "not an HDF5 file" in one_line(run_cli(not_hdf5, "-o", out, VGG_JAX_CACHE=str(cache)))
    assert list(out.parent.iterdir()) == []
    again = run_cli(src, "-o", out, VGG_JAX_CACHE=str(cache))
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.safetensors"]
    assert params_io.read_metadata(out)["architecture"] == "vgg11"


@pytest.mark.slow
def test_killed_extraction_leaves_nothing_after_the_next_run(deflated, tmp_path, cache):
    out = tmp_path / "x.safetensors"
    killed = run_cli(deflated, "-o", out, VGG_JAX_FAULT="convert-extract@2", VGG_JAX_CACHE=str(cache))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(temps(cache / "extract")) == 1 and not out.exists()
    assert "no such file" in one_line(run_cli(tmp_path / "missing.h5", "-o", out, VGG_JAX_CACHE=str(cache)))
    assert list((cache / "extract").iterdir()) == []
    again = run_cli(deflated, "-o", out, VGG_JAX_CACHE=str(cache))
    assert again.returncode == 0, again.stderr
    assert list((cache / "extract").iterdir()) == [] and not temps(tmp_path)


# ---- what the report says it knows ----------------------------------------------------------------------


def test_inferred_conventions_are_flagged(src):
    _, report = load_keras(src)
    text = str(report)
    assert report.kernels.source == "inferred" and "[inferred]" in text
    assert "warning       kernel convention inferred, not recorded in the file" in text and "`kernels=theano`" in text
    assert "fc1 rows" not in text  # a no-top file has no fc1 to guess about


def test_recorded_backend_decides_the_kernels(src, vgg11_params):
    """A Keras 2 file saved by the Theano backend holds (H,W,I,O) kernels for true convolution: the backend
    attribute, not the layout, decides the flip."""
    with h5py.File(src, "r+") as f:
        f.attrs["backend"] = "theano"
        f.attrs["keras_version"] = "2.0.8"
    params, report = load_keras(src)
    assert (report.kernels.value, report.kernels.source) == ("theano", "recorded") and "warning" not in str(report)
    kernel = vgg11_params["block1_conv1"]["kernel"]
    np.testing.assert_array_equal(params["block1_conv1"]["kernel"], kernel[::-1, ::-1])
    assert load_keras(src, kernels="tf")[1].kernels.source == "override"


def test_official_release_file_is_recognised(tmp_path, monkeypatch):
    """An official file is known by its md5 (REFERENCE.md lists md5s); here a Keras 1 VGG16 no-top file stands
    in for it, registered under its own md5 as the mirror test does."""
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    legacy.write_keras1(path, legacy.random_params(include_top=False, seed=3), "tf")
    _, before = load_keras(path)
    assert before.official is None and "release  " not in str(before)
    release = download.Release("vgg16/" + path.name, download.md5(path))
    monkeypatch.setitem(download.OFFICIAL, "vgg16-notop", release)
    report = convert_file(path, tmp_path / "x.safetensors")
    text = str(report)
    assert f"release       official Keras release file ({path.name})" in text, text
    assert report.kernels.source == "known" and "warning" not in text
    assert params_io.read_metadata(tmp_path / "x.safetensors")["official_release"] == path.name
