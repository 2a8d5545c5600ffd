"""Hostile data folders: odd names, symlink loops, decompression bombs, unsupported formats, train/valid
duplicates and clashing ids. Each case is one exact phrase in the data report, and the source still trains."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgg_jax import data
from vgg_jax.data.checks import MAX_PIXELS, check_image_file, image_dimensions
from vgg_jax.errors import UserError
from vgg_jax.data.image import load_image
from vgg_jax.data.synthetic import write_folder

S = 32  # decoded size: small and fast; what is tested is what gets listed, skipped and named
LIMIT = f"{MAX_PIXELS:,}"


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A real, all-black 1-bit PNG of width x height: tens of KB on disk, width*height pixels once decoded."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits of one row
    z = zlib.compressobj(9)
    pixels = b"".join(z.compress(row * 1000) for _ in range(height // 1000)) + z.compress(row * (height % 1000))
    pixels += z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = bomb_png(tmp_path_factory.mktemp("bomb") / "x.png", 30000, 30000)
    with pytest.raises(Image.DecompressionBombError):  # Pillow agrees it is a bomb: the file is a real PNG
        Image.open(path)
    return path


def skipped_under(source: data.Source, root: Path) -> dict[str, str]:
    return {os.path.relpath(p, root): why for p, why in source.skipped}


def check_report(source: data.Source) -> str:
    """describe() is one printable line (no surrogates: stdout is strict UTF-8)."""
    line = source.describe(max_listed=20)
    assert "\n" not in line
    line.encode("utf-8")
    return line


def check_passes(source: data.Source, batch_size: int = 2) -> list[str]:
    """One train epoch and one eval pass decode every kept file: all masks True, nothing failed. Returns eval ids."""
    if source.labelled:
        train = list(data.train_batches(source, batch_size, image_size=S, seed=0))
        assert len(train) == data.steps_per_epoch(source, batch_size) and all(b["mask"].all() for b in train)
    batches = list(data.eval_batches(source, batch_size, image_size=S))
    ids = [i for b in batches for i, m in zip(b["id"], b["mask"]) if m]
    assert ids == source.ids and len(ids) == source.num_examples and source.failed == []
    return ids


def write_bad_name(folder: Path, name: bytes, content: bytes) -> None:
    fd = os.open(os.path.join(os.fsencode(str(folder)), name), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


def test_non_utf8_names_and_symlink_loops_are_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path / "d", train=3, valid=2, test=0, size=(40, 40))
    cats, dogs = root / "train" / "cats", root / "train" / "dogs"
    write_bad_name(cats, b"bad\xff.jpg", (cats / "cat.0.jpg").read_bytes())
    (dogs / "sub\xe9").mkdir()  # a valid UTF-8 folder name: its images are fine
    shutil.copy(dogs / "dog.0.jpg", dogs / "sub\xe9" / "ok.jpg")
    os.symlink("b", cats / "a")
    os.symlink("a", cats / "b")
    os.symlink(".", cats / "loop")  # a folder link to the folder it sits in
    os.symlink("..", dogs / "up")  # ... and to the split folder above it
    (cats / "deep").mkdir()
    os.symlink("../..", cats / "deep" / "back")
    os.symlink("train", root / "train" / "self")  # dangling, beside the class folders: counted, not a class
    source = data.open_source(root, "train")
    assert source.class_names == ["cats", "dogs"] and source.num_examples == 7
    assert skipped_under(source, root / "train") == {
        "cats/a": "symlink loop",
        "cats/b": "symlink loop",
        "cats/bad\udcff.jpg": "file name is not valid UTF-8",
        "cats/deep/back": "symlink loop",
        "cats/loop": "symlink loop",
        "dogs/up": "symlink loop",
        "self": "unreadable (No such file or directory)",
    }
    line = check_report(source)
    assert "7 skipped: " in line and f"{cats}/bad\\xff.jpg (file name is not valid UTF-8)" in line
    assert f"{cats}/loop (symlink loop)" in line and f"{dogs}/up (symlink loop)" in line
    ids = check_passes(source)
    assert "dogs/sub\xe9/ok" in ids


def test_a_non_utf8_folder_name_and_class_name(tmp_path):
    root = write_folder(tmp_path / "d", train=2, valid=2, test=0, size=(40, 40))
    bad = os.path.join(os.fsencode(str(root / "train" / "cats")), b"r\xe9union")
    os.mkdir(bad)
    write_bad_name(Path(os.fsdecode(bad)), b"x.jpg", (root / "train" / "cats" / "cat.0.jpg").read_bytes())
    source = data.open_source(root, "train")
    assert skipped_under(source, root / "train") == {"cats/r\udce9union/x.jpg": "folder name is not valid UTF-8"}
    assert "cats/r\\xe9union/x.jpg (folder name is not valid UTF-8)" in check_report(source)
    check_passes(source)
    os.mkdir(os.path.join(os.fsencode(str(root / "valid")), b"fr\xe9res"))
    with pytest.raises(UserError) as e:
        data.open_source(root, "valid")
    assert (
        str(e.value)
        == f"{root}/valid/fr\\xe9res: class folder name is not valid UTF-8; rename it (class names are labels)"
    )


def test_unlabelled_folder_with_a_bad_name_and_a_loop_keeps_one_row_per_image(tmp_path):
    folder = tmp_path / "test1"
    folder.mkdir()
    jpeg = encode(Image.new("RGB", (20, 20), (9, 9, 9)), "JPEG")
    for i in (1, 2, 10):
        (folder / f"{i}.jpg").write_bytes(jpeg)
    write_bad_name(folder, b"bad\xff.jpg", jpeg)
    os.symlink(".", folder / "loop")
    os.symlink("y", folder / "x.jpg")
    os.symlink("x.jpg", folder / "y")
    source = data.open_source(folder, "test")
    assert skipped_under(source, folder) == {
        "bad\udcff.jpg": "file name is not valid UTF-8",
        "loop": "symlink loop",
        "x.jpg": "symlink loop",
        "y": "symlink loop",
    }
    check_report(source)
    assert check_passes(source) == ["1", "2", "10"]
    # A prediction writes a row for each skipped image file, named by its id; "y" is no image file: no row.
    assert source.unreadable_ids == ["bad\\xff", "x"]
    assert source.id_of(str(folder / "y")) is None and source.id_of(str(folder / "2.jpg")) == "2"


def test_symlinked_images_and_class_folders_outside_the_data_folder_are_followed(tmp_path):
    elsewhere = write_folder(tmp_path / "elsewhere", train=2, valid=0, test=0, size=(40, 40))
    root = write_folder(tmp_path / "d", train=2, valid=2, test=0, size=(40, 40))
    os.symlink(elsewhere / "train" / "cats" / "cat.0.jpg", root / "train" / "cats" / "linked.jpg")
    os.symlink(elsewhere / "train" / "dogs", root / "train" / "dogs" / "more")
    source = data.open_source(root, "train")
    assert source.skipped == [] and source.num_examples == 4 + 1 + 2
    assert {"cats/linked", "dogs/more/dog.0", "dogs/more/dog.1"} <= set(check_passes(source))


def test_an_image_too_large_to_decode_is_skipped_before_the_first_step(tmp_path, bomb):
    root = write_folder(tmp_path / "d", train=2, valid=2, test=0, size=(40, 40))
    shutil.copy(bomb, root / "train" / "dogs" / "huge.png")
    jpeg = bytearray((root / "train" / "cats" / "cat.0.jpg").read_bytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 9000)  # a tiny JPEG whose frame header says 9000x20000
    (root / "train" / "cats" / "wide.jpg").write_bytes(bytes(jpeg))
    source = data.open_source(root, "train")
    assert skipped_under(source, root / "train") == {
        "cats/wide.jpg": f"too large: 9000x20000 pixels, over the {LIMIT}-pixel limit",
        "dogs/huge.png": f"too large: 30000x30000 pixels, over the {LIMIT}-pixel limit",
    }
    assert f"huge.png (too large: 30000x30000 pixels, over the {LIMIT}-pixel limit)" in check_report(source)
    check_passes(source)


@pytest.mark.parametrize(
    "fmt, kw",
    [
        ("JPEG", {"exif": b"Exif\0\0" + b"\0" * 3000}),  # the frame header lies past a 3 KB EXIF block
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"quality": 80}),
        ("WEBP", {"quality": 80, "mode": "RGBA"}),  # lossy with alpha: an extended (VP8X) file
    ],
)
def test_header_dimensions_are_the_decoded_size(tmp_path, fmt, kw):
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (37, 123, 3), dtype=np.uint8)).convert(kw.pop("mode", "RGB"))
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(encode(image, fmt, **kw))
    assert image_dimensions(path) == (123, 37) and check_image_file(path) is None, f"seed 7, {fmt} {kw}"


@pytest.mark.slow
def test_classify_refuses_a_decompression_bomb_in_one_line(tmp_path, bomb):
    from vgg_jax.convert import legacy

    weights = tmp_path / "w.h5"
    legacy.write_keras1(weights, legacy.random_params(depths=(1, 1, 2, 2, 2), include_top=False), "tf")
    result = subprocess.run(
        [sys.executable, "-m", "vgg_jax", "classify", str(bomb), "--weights", str(weights)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr == f"vgg-jax: error: {bomb}: image too large to decode (30000x30000 pixels, limit {LIMIT})\n"


def test_load_image_refuses_images_over_the_limit_in_every_format(tmp_path):
    """Between 1x and 2x Pillow's limit Pillow only warns; over 2x it raises: both are one UserError here."""
    png = bomb_png(tmp_path / "warn.png", 9500, 9500)  # 90.25 M pixels: over the limit, under 2x
    ppm = tmp_path / "warn.ppm"  # a format whose header we do not read: Pillow's header is checked instead
    ppm.write_bytes(b"P5\n9500 9500\n255\n" + b"\0" * 64)
    big_ppm = tmp_path / "bomb.ppm"
    big_ppm.write_bytes(b"P5\n30000 30000\n255\n" + b"\0" * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        for path in (png, ppm):
            with pytest.raises(UserError) as e:
                load_image(path)
            assert str(e.value) == f"{path}: image too large to decode (9500x9500 pixels, limit {LIMIT})"
        with pytest.raises(UserError, match=r"bomb\.ppm: image too large to decode \(Image size \(900000000 pixels\)"):
            load_image(big_ppm)
    assert load_image(bomb_png(tmp_path / "ok.png", 300, 200), size=None).shape == (200, 300, 3)


def test_load_image_names_loops_folders_and_odd_names_in_one_line(tmp_path):
    os.symlink("b.png", tmp_path / "a.png")
    os.symlink("a.png", tmp_path / "b.png")
    write_bad_name(tmp_path, b"bad\xff.png", b"not a png")
    cases = {
        str(tmp_path / "a.png"): f"{tmp_path}/a.png: cannot read image (symlink loop)",
        os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"bad\xff.png")): (
            f"{tmp_path}/bad\\xff.png: cannot decode image (not an image format Pillow reads)"
        ),
        str(tmp_path): f"{tmp_path}: cannot read image (Is a directory)",
    }
    for path, message in cases.items():
        with pytest.raises(UserError) as e:
            load_image(path)
        assert str(e.value) == message


def test_unsupported_formats_are_counted_by_extension_and_by_content(tmp_path):
    root = write_folder(tmp_path / "d", train=2, valid=2, test=0, size=(40, 40))
    cats, dogs = root / "train" / "cats", root / "train" / "dogs"
    tiff = encode(Image.new("RGB", (20, 20), (1, 2, 3)), "TIFF")
    (cats / "scan.tif").write_bytes(tiff)
    (cats / "scan2.TIFF").write_bytes(tiff)
    (cats / "tiff_inside.jpg").write_bytes(tiff)
    (cats / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 100)
    (dogs / "phone_inside.jpg").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 100)
    (dogs / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (dogs / "logo_inside.png").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>')
    for stray in ("Thumbs.db", "README.txt", "desktop.ini", ".DS_Store"):  # folder furniture: ignored
        (dogs / stray).write_bytes(b"\0" * 10)
    source = data.open_source(root, "train")
    assert skipped_under(source, root / "train") == {
        "cats/phone.heic": "unsupported format: HEIC",
        "cats/scan.tif": "unsupported format: TIFF",
        "cats/scan2.TIFF": "unsupported format: TIFF",
        "cats/tiff_inside.jpg": "unsupported format: TIFF",
        "dogs/logo.svg": "unsupported format: SVG",
        "dogs/logo_inside.png": "unsupported format: SVG",
        "dogs/phone_inside.jpg": "unsupported format: HEIC",
    }
    line = check_report(source)
    assert line.startswith(f"{root / 'train'}: 4 images, 2 classes (cats 2, dogs 2), 7 skipped: ")
    assert f"{cats}/scan.tif (unsupported format: TIFF)" in line
    check_passes(source)
    (root / "valid" / "cats").rename(root / "valid" / "kittens")  # class names must still agree
    for f in (root / "valid" / "kittens").iterdir():
        f.unlink()
    (root / "valid" / "kittens" / "a.tif").write_bytes(tiff)
    with pytest.raises(UserError) as e:
        data.open_source(root, "valid")
    assert str(e.value) == f"{root / 'valid'}: classes (dogs, kittens) differ from {root / 'train'} (cats, dogs)"


def test_a_folder_of_only_unsupported_files_is_one_line(tmp_path):
    (tmp_path / "a.tif").write_bytes(encode(Image.new("RGB", (4, 4)), "TIFF"))
    with pytest.raises(UserError) as e:
        data.open_source(tmp_path, "test")
    assert str(e.value) == f"{tmp_path}: none of its 1 image files can be read (first: a.tif: unsupported format: TIFF)"


def test_same_bytes_in_train_and_valid_are_flagged(tmp_path):
    root = write_folder(tmp_path / "d", train=3, valid=3, test=0, size=(40, 40))
    train = data.open_source(root, "train")
    valid = data.open_source(root, "valid")
    assert data.overlap(train, valid) == [] and data.overlap_warning(train, valid) is None
    shutil.copy(root / "train" / "cats" / "cat.0.jpg", root / "valid" / "cats" / "copy.jpg")
    shutil.copy(root / "train" / "dogs" / "dog.2.jpg", root / "valid" / "cats" / "wrong_class.jpg")
    os.symlink(root / "train" / "dogs" / "dog.1.jpg", root / "valid" / "dogs" / "link.jpg")
    near = bytearray((root / "train" / "dogs" / "dog.0.jpg").read_bytes())
    near[len(near) // 2] ^= 0xFF  # same size, different bytes: not the same image
    (root / "valid" / "dogs" / "near.jpg").write_bytes(bytes(near))
    valid = data.open_source(root, "valid")
    t, v = root / "train", root / "valid"
    assert data.overlap(train, valid) == [
        (str(t / "cats/cat.0.jpg"), str(v / "cats/copy.jpg")),
        (str(t / "dogs/dog.2.jpg"), str(v / "cats/wrong_class.jpg")),
        (str(t / "dogs/dog.1.jpg"), str(v / "dogs/link.jpg")),
    ]
    assert data.overlap_warning(train, valid) == (
        "warning: 3 images appear in both train and valid (same bytes): train/cats/cat.0.jpg = valid/cats/copy.jpg, "
        "train/dogs/dog.2.jpg = valid/cats/wrong_class.jpg, train/dogs/dog.1.jpg = valid/dogs/link.jpg"
    )
    assert data.overlap_warning(train, valid, max_listed=1).endswith("valid/cats/copy.jpg, +2 more")


def test_overlap_of_a_carved_valid_part(tmp_path):
    """valid_fraction: copies of a train file that the seeded hash puts in valid are flagged; those in train are not."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(12):
            (tmp_path / c / f"{i}.png").write_bytes(encode(Image.new("RGB", (3, 3), (i, ord(c), 0)), "PNG"))
    original = data.open_source(tmp_path, "train", valid_fraction=0.3, seed=0).paths[0]
    for k in range(10):
        shutil.copy(original, tmp_path / "b" / f"copy{k}.png")
    train = data.open_source(tmp_path, "train", valid_fraction=0.3, seed=0)
    valid = data.open_source(tmp_path, "valid", valid_fraction=0.3, seed=0)
    copies = [p for p in valid.paths if "copy" in p]
    assert original in train.paths and 0 < len(copies) < 10, "seed 0: the copies fall on both sides"
    assert data.overlap(train, valid) == [(original, c) for c in copies]
    name = os.path.relpath(original, tmp_path)
    assert data.overlap_warning(train, valid, max_listed=1) == (
        f"warning: {len(copies)} images appear in both train and valid (same bytes): "
        f"{name} = b/{os.path.basename(copies[0])}, +{len(copies) - 1} more"
    )


def test_ids_that_differ_only_by_extension_keep_it_and_stay_unique(tmp_path):
    folder = tmp_path / "test1"
    folder.mkdir()
    for name, color in (("one.jpg", 10), ("one.png", 20), ("two.jpg", 30), ("three.jpg", 40)):
        Image.new("RGB", (20, 20), (color,) * 3).save(folder / name)
    (folder / "three.bmp").write_bytes(b"")  # broken: skipped, but its id must not clash with three.jpg's row
    (folder / "three.tif").write_bytes(encode(Image.new("RGB", (4, 4)), "TIFF"))
    source = data.open_source(folder, "test")
    assert source.ids == ["one.jpg", "one.png", "three.jpg", "two"]
    assert (
        check_report(source) == f"{folder}: 4 images, unlabelled, 2 skipped: {folder}/three.bmp (zero bytes); "
        f"{folder}/three.tif (unsupported format: TIFF), 5 ids keep their extension (names that differ only by "
        "extension): one.jpg, one.png, three.bmp, three.jpg, +1 more"
    )
    assert check_passes(source, batch_size=3) == ["one.jpg", "one.png", "three.jpg", "two"]
    rows = source.ids + source.unreadable_ids  # what predict writes: every id once
    assert rows == ["one.jpg", "one.png", "three.jpg", "two", "three.bmp", "three.tif"] and len(set(rows)) == 6
    assert source.id_of(str(folder / "two.jpg")) == "two" and source.id_of(str(folder / "three.bmp")) == "three.bmp"


def test_ids_stay_unique_when_a_kept_extension_meets_another_name(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for name in ("x.jpg", "x.png", "x.jpg.png", "y.gif"):
            Image.new("RGB", (5, 5), (len(name), 0, 0)).save(tmp_path / c / name)
    source = data.open_source(tmp_path, "train")
    assert sorted(source.ids) == sorted(f"{c}/{n}" for c in "ab" for n in ("x.jpg", "x.png", "x.jpg.png", "y"))
    check_report(source)
    check_passes(source)
