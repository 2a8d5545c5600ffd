"""Input pipeline on real encoded files: formats, broken files, exactly-once eval, seeded train order, sharding, errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vgg_jax import data
from vgg_jax.data.checks import check_image_bytes, check_image_file
from vgg_jax.errors import UserError

S = 16  # output size: small keeps the tests fast; formats and shapes are what is tested
PAD = (124, 117, 104)  # resize.PAD_FILL: resize.PAD_RGB rounded


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(color, size=(23, 17), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def jpeg_with_zero_height() -> bytes:
    """A JPEG whose head and tail look fine but whose SOF0 says height 0: libjpeg refuses it at decode time."""
    b = bytearray(encode(solid((90, 90, 90)), "JPEG", quality=90))
    sof = b.index(b"\xff\xc0")
    b[sof + 5 : sof + 7] = b"\x00\x00"
    return bytes(b)


# Good files: name -> (bytes, expected RGB of the (solid) decoded image, tolerance). Odd sizes on purpose.
GOOD = {
    "cats/rgb.jpg": (encode(solid((200, 60, 30), (41, 29)), "JPEG", quality=95), (200, 60, 30), 4),
    "cats/gray.jpg": (encode(solid(77, (13, 50), "L"), "JPEG", quality=95), (77, 77, 77), 2),
    "cats/cmyk.jpg": (encode(solid((200, 60, 30)).convert("CMYK"), "JPEG", quality=95), (200, 60, 30), 4),
    "cats/alpha.png": (encode(solid((10, 200, 30, 0), (7, 3), "RGBA"), "PNG"), (10, 200, 30), 0),
    "cats/palette.png": (encode(solid((204, 51, 51)).convert("P"), "PNG"), (204, 51, 51), 0),
    "cats/frames.gif": (
        encode(solid((0, 255, 0)), "GIF", save_all=True, append_images=[solid((0, 0, 255))]),
        (0, 255, 0),
        0,
    ),
    "cats/IMG_2.JPEG": (encode(solid((1, 2, 3), (500, 1)), "JPEG", quality=95, progressive=True), (1, 2, 3), 4),
    "dogs/rgb.bmp": (encode(solid((5, 6, 250), (1, 1)), "BMP"), (5, 6, 250), 0),
    "dogs/lossless.webp": (encode(solid((9, 99, 199)), "WEBP", lossless=True), (9, 99, 199), 0),
    "dogs/png_named.jpg": (encode(solid((33, 66, 99)), "PNG"), (33, 66, 99), 0),  # wrong extension, fine content
    "dogs/big.jpg": (encode(solid((120, 130, 140), (333, 251)), "JPEG", quality=90), (120, 130, 140), 4),
}
JPEG = GOOD["cats/rgb.jpg"][0]
PNG = GOOD["cats/alpha.png"][0]
BROKEN = {
    "cats/empty.jpg": (b"", "zero bytes"),
    "cats/truncated.jpg": (JPEG[: len(JPEG) // 2], "truncated JPEG"),
    "dogs/truncated.png": (PNG[:40], "truncated PNG"),
    "dogs/notes.jpg": (b"these are my notes, not a photo\n" * 20, "not an image"),
    "dogs/page.png": (b"<html><body>404 Not Found</body></html>", "not an image"),
    "dogs/mono.bmp": (encode(solid(1, mode="1"), "BMP"), "unsupported BMP (1-bit)"),
    "dogs/tiff.jpg": (encode(solid((1, 1, 1)), "TIFF"), "unsupported format: TIFF"),
}


@pytest.fixture(scope="module")
def dogscats(tmp_path_factory):
    """ROOT/{train,valid}/{cats,dogs} with every good kind and every broken kind in train, plus an unlabelled test1/."""
    root = tmp_path_factory.mktemp("dogscats")
    for rel, (blob, _, _) in GOOD.items():
        _write(root / "train" / rel, blob)
    for rel, (blob, _) in BROKEN.items():
        _write(root / "train" / rel, blob)
    os.symlink(root / "nowhere.jpg", root / "train" / "cats" / "dangling.jpg")  # unreadable (root ignores chmod)
    _write(root / "train" / "cats" / "Thumbs.db", b"\0" * 10)  # not an image extension: ignored, not "skipped"
    _write(root / "train" / "dogs" / ".hidden.jpg", b"")  # hidden: ignored
    for c, color in (("cats", 40), ("dogs", 220)):
        for i in range(5):
            _write(root / "valid" / c / f"{c[:-1]}.{i}.png", encode(solid((color, i, i)), "PNG"))
    for i in (10, 2, 1):  # natural order: 1, 2, 10
        _write(root / "test1" / f"{i}.jpg", encode(solid((i, i, i)), "JPEG", quality=95))
    return root


def _write(path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)


def all_batches(source, batch_size=4, **kw) -> list[dict]:
    return list(data.eval_batches(source, batch_size, image_size=S, **kw))


def test_tensorflow_is_kept_off_accelerators():
    pytest.importorskip("tensorflow")  # the tfds extra: tfds sources are the only reader of tensorflow
    from vgg_jax.data.tfds import _tf

    assert _tf().config.get_visible_devices("GPU") == []


@pytest.mark.slow
def test_importing_the_pipeline_loads_neither_tensorflow_nor_jax():
    code = "import sys, vgg_jax.data, vgg_jax.data.decode, vgg_jax.data.batching, vgg_jax.data.tfds; print(sorted(m for m in ('tensorflow', 'jax', 'tensorflow_datasets', 'grain') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("rel", sorted(BROKEN))
def test_structural_check_names_each_broken_kind(rel, tmp_path):
    path = tmp_path / os.path.basename(rel)
    path.write_bytes(BROKEN[rel][0])
    assert BROKEN[rel][1] in check_image_file(path)


def test_structural_check_passes_every_good_kind_and_trailing_bytes():
    for blob, _, _ in GOOD.values():
        assert check_image_bytes(blob[:64], blob[-4096:], len(blob)) is None
    padded = JPEG + b"\0" * 100  # some cameras pad after the end marker
    assert check_image_bytes(padded[:64], padded[-4096:], len(padded)) is None


def test_train_folder_yields_exactly_the_good_images_with_labels_and_reports_the_broken(dogscats):
    source = data.open_source(dogscats, "train")
    assert source.class_names == ["cats", "dogs"]
    assert source.num_examples == len(GOOD)
    skipped = {os.path.relpath(p, dogscats / "train"): why for p, why in source.skipped}
    assert set(skipped) == set(BROKEN) | {"cats/dangling.jpg"}
    assert (
        all(BROKEN[r][1] in why for r, why in skipped.items() if r in BROKEN)
        and "unreadable" in skipped["cats/dangling.jpg"]
    )
    line = source.describe()
    assert (
        "\n" not in line
        and f"{len(GOOD)} images" in line
        and f"{len(BROKEN) + 1} skipped" in line
        and "cats 7, dogs 4" in line
    )
    assert line.endswith(f"; +{len(BROKEN) + 1 - 3} more")

    batches = all_batches(source)
    got = {i: (img, lab) for b in batches for i, img, lab, m in zip(b["id"], b["image"], b["label"], b["mask"]) if m}
    assert set(got) == {os.path.splitext(r)[0] for r in GOOD}
    for rel, (_, color, tol) in GOOD.items():
        image, label = got[os.path.splitext(rel)[0]]
        assert image.shape == (S, S, 3) and image.dtype == np.uint8
        assert label == (0 if rel.startswith("cats/") else 1)
        assert np.abs(image.astype(int) - color).max() <= tol, (rel, image[0, 0], color)
    assert source.failed == []


def test_eval_is_exactly_once_in_order_padded_masked_and_repeatable(dogscats):
    source = data.open_source(dogscats, "valid")
    first, second = all_batches(source, 3), all_batches(source, 3)
    assert len(first) == data.eval_steps(source, 3) == 4
    assert all(
        b["image"].shape == (3, S, S, 3) and b["label"].dtype == np.int32 and b["mask"].dtype == bool for b in first
    )
    ids = np.concatenate([b["id"] for b in first])
    mask = np.concatenate([b["mask"] for b in first])
    assert list(ids[mask]) == source.ids == [f"cats/cat.{i}" for i in range(5)] + [f"dogs/dog.{i}" for i in range(5)]
    assert list(mask) == [True] * 10 + [False] * 2 and list(ids[~mask]) == ["", ""]
    assert not first[-1]["image"][1:].any() and list(first[-1]["label"]) == [1, 0, 0]
    for a, b in zip(first, second):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_unlabelled_folder_keeps_ids_in_natural_order(dogscats):
    source = data.open_source(dogscats / "test1", "test")
    assert data.open_source(dogscats, "test").fingerprint == source.fingerprint
    (batch,) = all_batches(source, 4)
    assert list(batch["id"]) == ["1", "2", "10", ""] and list(batch["mask"]) == [True, True, True, False]
    assert list(batch["label"][:3]) == [data.UNLABELLED] * 3 and not source.labelled
    assert [int(batch["image"][i, 0, 0, 0]) for i in range(3)] == pytest.approx([1, 2, 10], abs=2)
    with pytest.raises(UserError, match="unlabelled"):
        next(data.train_batches(source, 2, image_size=S))


@pytest.mark.parametrize("count", [2, 3])
def test_eval_shards_are_disjoint_complete_and_equally_long(dogscats, count):
    source = data.open_source(dogscats, "valid")
    shards = [all_batches(source, 2, process_index=p, process_count=count) for p in range(count)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == data.eval_steps(source, 2, count)
    ids = [i for s in shards for b in s for i, m in zip(b["id"], b["mask"]) if m]
    assert sorted(ids) == sorted(source.ids) and len(ids) == len(set(ids))


def train_order(source, **kw) -> list[bytes]:
    """Each training image's bytes, in the order batches deliver them (every valid image is a distinct colour)."""
    return [img.tobytes() for b in data.train_batches(source, 2, image_size=4, **kw) for img in b["image"]]


def test_train_order_is_a_pure_function_of_seed_and_epoch(dogscats):
    source = data.open_source(dogscats, "valid")
    order = train_order(source, seed=1, epoch=0)
    assert len(order) == data.steps_per_epoch(source, 2) * 2 == 10 and len(set(order)) == 10
    assert train_order(source, seed=1, epoch=0) == order
    assert train_order(source, seed=2, epoch=0) != order and train_order(source, seed=1, epoch=1) != order
    assert train_order(source, seed=1, epoch=0, start_batch=3) == order[6:]  # resume: same data position
    shards = [train_order(source, seed=1, epoch=0, process_index=p, process_count=2) for p in range(2)]
    assert [len(s) for s in shards] == [4, 4]  # 10 // (2 * 2) = 2 steps of 2 per process; remainder dropped
    assert shards[0][:2] + shards[1][:2] == order[:4] and not set(shards[0]) & set(shards[1])


def test_train_batches_have_static_shapes_and_seeded_augmentation(dogscats):
    source = data.open_source(dogscats, "train")
    plain = list(data.train_batches(source, 4, image_size=S, seed=0))
    assert len(plain) == data.steps_per_epoch(source, 4) == len(GOOD) // 4
    assert all(
        b["image"].shape == (4, S, S, 3) and b["mask"].all() and set(b) == {"image", "label", "mask"} for b in plain
    )
    aug = [list(data.train_batches(source, 4, image_size=S, seed=0, augment=True)) for _ in range(2)]
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(*aug))
    assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(plain, aug[0]))  # augmentation keeps the order


def test_augmentation_flips_and_crops_per_epoch(tmp_path):
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32, 0] = 255  # left red, right blue: a flip shows as blue on the left
    pixels[:, 32:, 2] = 255
    for c in ("a", "b"):
        _write(tmp_path / c / "x.png", encode(Image.fromarray(pixels), "PNG"))
    source = data.open_source(tmp_path)
    images = [next(data.train_batches(source, 2, image_size=S, epoch=e, augment=True))["image"] for e in range(8)]
    left_red = [bool(img[0, :, 0, 0].min() == 255) for img in images]
    assert any(left_red) and not all(left_red)
    assert len({img[0].tobytes() for img in images}) > 2  # crops move, not only flips
    again = next(data.train_batches(source, 2, image_size=S, epoch=3, augment=True))["image"]
    assert np.array_equal(again, images[3])


def test_a_file_that_fails_only_at_decode_time_is_masked_and_reported(tmp_path):
    for c in ("cats", "dogs"):
        for i in range(3):
            _write(tmp_path / c / f"{i}.png", encode(solid((i, 0, 0)), "PNG"))
    _write(tmp_path / "dogs" / "liar.jpg", jpeg_with_zero_height())
    source = data.open_source(tmp_path, "train")
    assert source.num_examples == 7 and source.skipped == []  # the structural check cannot see it
    batches = all_batches(source, 4)
    masked = [i for b in batches for i, m in zip(b["id"], b["mask"]) if not m]
    assert sum(b["mask"].sum() for b in batches) == 6 and len(masked) == 2  # the liar's slot and one padding slot
    assert [os.path.basename(p) for p, _ in source.failed] == ["liar.jpg"] and "failed to decode: " in source.failed[0][
        1
    ]
    train = list(data.train_batches(source, 7, image_size=S))
    assert len(train) == 1 and train[0]["mask"].sum() == 6 and len(source.failed) == 1


def test_worker_processes_give_the_batches_and_failures_threads_give(dogscats, tmp_path):
    """Two spawned grain workers: the same arrays, ids, masks and failed files as in-process threads, train and eval."""
    for rel, (blob, _, _) in GOOD.items():
        _write(tmp_path / rel, blob)
    _write(tmp_path / "dogs" / "liar.jpg", jpeg_with_zero_height())
    runs = []
    for workers in (0, 2):
        source = data.open_source(tmp_path, "train")
        train = list(data.train_batches(source, 4, image_size=S, seed=5, epoch=1, augment=True, workers=workers))
        runs.append((train, all_batches(source, 5, workers=workers), source.failed))
    (train0, eval0, failed0), (train2, eval2, failed2) = runs
    assert len(train0) == len(train2) == 3 and len(eval0) == len(eval2) == 3
    for a, b in zip(train0 + eval0, train2 + eval2):
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a), "seed 5"
    assert [os.path.basename(p) for p, _ in failed2] == ["liar.jpg"] and failed2 == failed0
    assert type(eval2[0]["image"]) is np.ndarray  # copied out of grain's shared memory, which is then freed


@pytest.mark.parametrize(
    "resize, expect",
    [
        ("squash", lambda img: (img[:, :8] == (255, 0, 0)).all() and (img[:, 8:] == (0, 0, 255)).all()),
        ("center-crop", lambda img: (img[:, :8] == (255, 0, 0)).all() and (img[:, 8:] == (0, 0, 255)).all()),
        (
            "pad",
            lambda img: (img[:4] == PAD).all() and (img[12:] == PAD).all() and (img[4:12, :8] == (255, 0, 0)).all(),
        ),
    ],
)
def test_resize_modes(tmp_path, resize, expect):
    """A 64x32 image: left half red, right half blue (center-crop keeps the middle 32x32, which is half and half too)."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32, 0] = 255
    pixels[:, 32:, 2] = 255
    for c in ("a", "b"):
        _write(tmp_path / c / "x.png", encode(Image.fromarray(pixels), "PNG"))
    (batch,) = all_batches(data.open_source(tmp_path, "train"), 2, resize=resize)
    assert expect(batch["image"][0])


def test_valid_fraction_holds_out_a_stable_disjoint_part(dogscats, tmp_path):
    for c in ("cats", "dogs"):
        for i in range(20):
            _write(tmp_path / "train" / c / f"{i}.png", encode(solid((i, 1, 1), (2, 2)), "PNG"))
    train = data.open_source(tmp_path, "train", valid_fraction=0.25, seed=3)
    valid = data.open_source(tmp_path, "valid", valid_fraction=0.25, seed=3)
    assert (
        set(train.ids).isdisjoint(valid.ids) and len(train.ids) + len(valid.ids) == 40 and 3 <= valid.num_examples <= 20
    )
    assert data.open_source(tmp_path, "valid", valid_fraction=0.25, seed=3).ids == valid.ids
    assert data.open_source(tmp_path, "valid", valid_fraction=0.25, seed=4).ids != valid.ids
    _write(tmp_path / "train" / "cats" / "new.png", encode(solid((1, 1, 1), (2, 2)), "PNG"))
    grown = data.open_source(tmp_path, "valid", valid_fraction=0.25, seed=3)
    assert set(valid.ids) <= set(grown.ids) and grown.fingerprint != valid.fingerprint  # nothing moves sides
    with pytest.raises(UserError, match="no valid/ folder"):
        data.open_source(tmp_path, "valid")
    with pytest.raises(UserError, match="ambiguous"):
        data.open_source(dogscats, "train", valid_fraction=0.1)


def test_fingerprint_follows_file_contents(tmp_path):
    for c in ("a", "b"):
        _write(tmp_path / c / "x.png", encode(solid((1, 2, 3)), "PNG"))
    before = data.open_source(tmp_path).fingerprint
    assert data.open_source(tmp_path).fingerprint == before
    _write(tmp_path / "a" / "x.png", encode(solid((1, 2, 3), (5, 5)), "PNG"))
    assert data.open_source(tmp_path).fingerprint != before


def _one_line_error(spec, *args, **kw) -> str:
    with pytest.raises(UserError) as e:
        data.open_source(spec, *args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_folder_mistakes_are_one_line_errors_naming_the_folder(tmp_path):
    assert str(tmp_path / "nope") in _one_line_error(tmp_path / "nope") and "no such" in _one_line_error(
        tmp_path / "nope"
    )
    (tmp_path / "empty").mkdir()
    assert str(tmp_path / "empty") in _one_line_error(tmp_path / "empty")
    assert "no images" in _one_line_error(tmp_path / "empty", "test")
    _write(tmp_path / "one" / "train" / "cats" / "a.png", encode(solid((1, 1, 1)), "PNG"))
    msg = _one_line_error(tmp_path / "one")
    assert "only 1 class" in msg and str(tmp_path / "one" / "train") in msg
    _write(tmp_path / "flat" / "a.png", encode(solid((1, 1, 1)), "PNG"))
    assert "no class subfolders" in _one_line_error(tmp_path / "flat", "train")
    _write(tmp_path / "bad" / "cats" / "a.jpg", b"")
    _write(tmp_path / "bad" / "dogs" / "b.jpg", b"junk")
    assert "none of its 2 image files" in _one_line_error(tmp_path / "bad")
    _write(tmp_path / "hole" / "cats" / "a.png", encode(solid((1, 1, 1)), "PNG"))
    (tmp_path / "hole" / "dogs").mkdir()
    assert str(tmp_path / "hole" / "dogs") in _one_line_error(tmp_path / "hole")
    assert "not a folder" in _one_line_error(tmp_path / "flat" / "a.png")
    assert "split must be" in _one_line_error(tmp_path / "hole", "holdout")


def test_edge_positions_yield_static_padding_not_errors(dogscats):
    source = data.open_source(dogscats, "valid")  # 10 examples
    steps = data.steps_per_epoch(source, 3)
    assert list(data.train_batches(source, 3, image_size=S, start_batch=steps)) == []  # resumed at the epoch's end
    with pytest.raises(UserError, match="start_batch"):
        next(data.train_batches(source, 3, image_size=S, start_batch=steps + 1))
    with pytest.raises(UserError, match="fewer than one global batch"):
        next(data.train_batches(source, 11, image_size=S))
    shards = [all_batches(source, 4, process_index=p, process_count=4) for p in range(4)]  # 16 slots, 10 examples
    assert [b["mask"].sum() for s in shards for b in s] == [4, 4, 2, 0] and shards[3][0]["image"].shape == (4, S, S, 3)
