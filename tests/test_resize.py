"""One decode + resize everywhere: the pipeline, `load_image` and `resize.decode_resize` give the same bytes,
nearest and bilinear are Keras' `load_img`, and the resize modes keep their geometry. Real files, fixed seeds."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from vgg_jax import data
from vgg_jax.errors import UserError
from vgg_jax.data.image import load_image
from vgg_jax.data.resize import DCT_MIN_REDUCTION, INTERPOLATIONS, PAD_FILL, RESIZE_MODES, decode, decode_resize
from vgg_jax.data.resize import resize as resize_image

SEED = 5
S = 29  # odd on purpose: pad rounds, center-crop and squash scale by non-integers


def noise(shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_images(folder) -> dict[str, str]:
    """stem -> path of each kind: noisy RGB JPEG 97x61, RGBA PNG 40x120, grayscale JPEG, 16-bit gray PNG, palette GIF."""
    folder.mkdir(parents=True, exist_ok=True)
    gradient = (np.arange(21 * 33, dtype=np.uint32).reshape(21, 33) * 90).astype(np.uint16)
    images = {
        "wide.jpg": (Image.fromarray(noise((61, 97, 3))), {"quality": 90}),
        "tall.png": (Image.fromarray(noise((120, 40, 4), SEED + 1), "RGBA"), {}),
        "gray.jpg": (Image.fromarray(noise((97, 61), SEED + 2)), {"quality": 90}),
        "deep.png": (Image.fromarray(gradient), {}),
        "palette.gif": (Image.fromarray(noise((50, 70, 3), SEED + 3)).convert("P"), {}),
    }
    paths = {}
    for name, (image, kw) in images.items():
        image.save(folder / name, **kw)
        paths[os.path.splitext(name)[0]] = str(folder / name)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    return write_images(tmp_path_factory.mktemp("resize") / "test1")


def pipeline_arrays(folder: str, size: int, resize: str, interpolation: str) -> dict[str, np.ndarray]:
    """id -> image, through data.eval_batches on an unlabelled folder source (the real tf.data pipeline)."""
    source = data.open_source(folder, "test")
    batches = data.eval_batches(source, 2, image_size=size, resize=resize, interpolation=interpolation)
    out = {i: img for b in batches for i, img, m in zip(b["id"], b["image"], b["mask"]) if m}
    assert source.failed == [] and len(out) == source.num_examples
    return out


@pytest.mark.parametrize("resize", RESIZE_MODES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_pipeline_load_image_and_decode_resize_give_identical_bytes(images, resize, interpolation):
    folder = os.path.dirname(next(iter(images.values())))
    piped = pipeline_arrays(folder, S, resize, interpolation)
    assert set(piped) == set(images)
    for stem, path in images.items():
        want = decode_resize(path, S, resize, interpolation)
        with open(path, "rb") as f:
            from_bytes = decode_resize(f.read(), S, resize, interpolation)
        loaded = load_image(path, S, resize=resize, interpolation=interpolation)
        assert want.shape == (S, S, 3) and want.dtype == np.uint8
        for got in (piped[stem], from_bytes, loaded):
            assert got.dtype == np.uint8 and np.array_equal(got, want), (stem, resize, interpolation, f"seed {SEED}")


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_squash_and_center_crop_are_keras_load_img(images, interpolation):
    """squash = load_img(target_size), center-crop = load_img(keep_aspect_ratio=True), same interpolation name."""
    import keras

    for stem, path in images.items():
        if stem == "deep":  # 16-bit gray: load_img clips it to white (see test_16_bit_gray_keeps_its_high_byte)
            continue
        for resize, keep in (("squash", False), ("center-crop", True)):
            img = keras.utils.load_img(path, target_size=(S, S), interpolation=interpolation, keep_aspect_ratio=keep)
            want = keras.utils.img_to_array(img).astype(np.uint8)
            got = load_image(path, S, resize=resize, interpolation=interpolation)
            assert np.array_equal(got, want), (stem, resize, interpolation, f"seed {SEED}")


def test_load_image_defaults_to_keras_nearest_squash_as_classify_uses_it(images):
    import keras

    path = images["wide"]
    want = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 224))).astype(np.uint8)
    assert np.array_equal(load_image(path), want), f"seed {SEED}"
    assert not np.array_equal(load_image(path), load_image(path, interpolation="bilinear"))


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_nearest_and_bilinear_differ_on_noise(images, resize):
    nearest = decode_resize(images["wide"], S, resize, "nearest").astype(int)
    bilinear = decode_resize(images["wide"], S, resize, "bilinear").astype(int)
    # Antialiased bilinear averages the noise: its spread shrinks, nearest keeps single noisy pixels.
    assert np.abs(nearest - bilinear).mean() > 10 and bilinear.std() < nearest.std(), f"seed {SEED}"


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_pad_borders_hold_the_rounded_mean_which_preprocessing_zeroes(tmp_path, interpolation):
    from vgg_jax.models.preprocess import preprocess_input

    path = tmp_path / "wide.png"
    Image.fromarray(noise((32, 64, 3))).save(path)  # 2:1 -> 16x8 inside a 16x16 square, 4 rows above and below
    image = decode_resize(str(path), 16, "pad", interpolation)
    assert (image[:4] == PAD_FILL).all() and (image[12:] == PAD_FILL).all(), f"seed {SEED}"
    assert not (image[4:12] == PAD_FILL).all(axis=-1).any(), f"seed {SEED}"  # no padding inside the picture
    assert np.abs(np.asarray(preprocess_input(image[:1, :1]))).max() < 0.5


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_center_crop_of_a_2_to_1_image_is_squash_of_its_centre_square(tmp_path, interpolation):
    pixels = noise((40, 80, 3))
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    Image.fromarray(pixels[:, 20:60]).save(tmp_path / "square.png")
    crop = decode_resize(str(tmp_path / "wide.png"), 16, "center-crop", interpolation)
    square = decode_resize(str(tmp_path / "square.png"), 16, "squash", interpolation)
    if interpolation == "nearest":
        assert np.array_equal(crop, square), f"seed {SEED}"
    else:  # Pillow's box=: the edge columns' filter (2.5 px wide at this scale) reads the pixels beside the square
        assert np.array_equal(crop[:, 1:-1], square[:, 1:-1]), f"seed {SEED}"
        assert not np.array_equal(crop[:, [0, -1]], square[:, [0, -1]]), f"seed {SEED}"


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_augmentation_crops_and_flips_the_shared_resize(tmp_path, interpolation):
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "y.jpg"]
    for k, path in enumerate(paths):
        path.parent.mkdir()
        Image.fromarray(noise((45, 70, 3), SEED + k)).save(path)
    big = [decode_resize(str(p), round(16 * 256 / 224), "squash", interpolation) for p in paths]
    source = data.open_source(tmp_path)
    for epoch in range(3):
        (batch,) = data.train_batches(source, 2, image_size=16, epoch=epoch, augment=True, interpolation=interpolation)
        for image, label in zip(batch["image"], batch["label"]):
            windows = [big[label][y : y + 16, x : x + 16] for y in range(3) for x in range(3)]
            assert any(np.array_equal(image, w) or np.array_equal(image, w[:, ::-1]) for w in windows), (
                f"seed {SEED}, epoch {epoch}, label {label}"
            )


def test_16_bit_gray_keeps_its_high_byte(images):
    """Pillow's convert("RGB") clips 16-bit gray at 255 (nearly white); the high byte is what decoders give."""
    raw = np.asarray(Image.open(images["deep"])).astype(np.int64)
    got = load_image(images["deep"], size=None)
    assert got.shape == (21, 33, 3) and np.array_equal(got[..., 0], raw >> 8) and raw.max() > 255
    assert (got == got[..., :1]).all()


def test_a_file_that_fails_gives_the_same_reason_to_load_image_and_the_pipeline(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(noise((8, 8, 3))).save(tmp_path / c / "ok.png")
    blob = bytearray((tmp_path / "a" / "ok.png").read_bytes())
    blob[16:24] = b"\x00\x00\x00\x05\x00\x00\x00\x00"  # IHDR height 0: passes the structural check, Pillow refuses it
    liar = tmp_path / "b" / "liar.png"
    liar.write_bytes(bytes(blob))
    with pytest.raises(UserError) as e:
        load_image(liar)
    assert str(e.value).startswith(f"{liar}: cannot decode image (") and "\n" not in str(e.value)
    reason = str(e.value)[len(f"{liar}: cannot decode image (") : -1]
    source = data.open_source(tmp_path)
    assert source.skipped == []
    batches = list(data.eval_batches(source, 3, image_size=8))
    assert sum(b["mask"].sum() for b in batches) == 2
    assert source.failed == [(str(liar), f"failed to decode: {reason}")]


def test_bad_options_are_one_line_errors(images):
    path = images["wide"]
    cases = [
        (
            lambda: load_image(path, resize="stretch"),
            "resize must be one of squash, center-crop, pad. Received: resize='stretch'",
        ),
        (
            lambda: load_image(path, interpolation="bicubic"),
            "interpolation must be one of nearest, bilinear. Received: interpolation='bicubic'",
        ),
        (lambda: decode_resize(path, 0, "squash", "nearest"), "size must be a positive integer. Received: size=0"),
        (
            lambda: next(data.eval_batches(data.open_source(os.path.dirname(path), "test"), 2, interpolation="area")),
            "interpolation must be one of nearest, bilinear. Received: interpolation='area'",
        ),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as e:
            call()
        assert str(e.value) == message


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A real photo, 512x600 JPEG: matplotlib's sample grace_hopper.jpg (matplotlib is a dependency)."""
    from matplotlib import cbook

    with open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        return f.read()


def reencoded(photo: bytes, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    image = Image.open(io.BytesIO(photo))
    (image.convert("L") if kw.pop("gray", False) else image).save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"subsampling": 0, "quality": 95},
        {"subsampling": 1},
        {"progressive": True},
        {"gray": True},
        {"restart_marker_blocks": 1},
    ],
    ids=["original", "444", "422", "progressive", "gray", "restart-markers"],
)
def test_simplejpeg_decodes_the_pixels_pillow_decodes(photo, options):
    """JPEGs go through simplejpeg (libjpeg-turbo): the same pixels as Pillow's decoder, which Keras' load_img uses."""
    import io

    from vgg_jax.data.resize import _simplejpeg

    blob = photo if not options else reencoded(photo, **options)
    assert _simplejpeg(blob, 1) is not None  # the path under test is the one taken
    want = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    assert np.array_equal(np.asarray(decode(blob)), want), options


@pytest.mark.parametrize("resize_mode", RESIZE_MODES)
def test_dct_downscale_only_for_bilinear_and_within_its_tolerance(photo, resize_mode):
    """Bilinear on a JPEG >= 2 * DCT_MIN_REDUCTION times the target decodes at 1/2-1/8 scale: within 4 levels (mean
    <= 0.5) of resizing the full decode, in every mode's geometry. Nearest always resizes the full decode exactly."""
    import io

    full = Image.open(io.BytesIO(photo)).convert("RGB")
    scaled = 0
    for size in range(16, 161, 8):
        want = resize_image(full, size, resize_mode, "bilinear").astype(int)
        got = decode_resize(photo, size, resize_mode, "bilinear").astype(int)
        diff = np.abs(got - want)
        assert diff.max() <= 4 and diff.mean() <= 0.5, (size, resize_mode, diff.max(), diff.mean())
        scaled += min(full.size) / size >= 2 * DCT_MIN_REDUCTION
        assert np.array_equal(
            decode_resize(photo, size, resize_mode, "nearest"), resize_image(full, size, resize_mode, "nearest")
        )
    bilinear_16 = decode_resize(photo, 16, resize_mode, "bilinear")
    assert scaled >= 5 and not np.array_equal(bilinear_16, resize_image(full, 16, resize_mode, "bilinear"))  # DCT ran
