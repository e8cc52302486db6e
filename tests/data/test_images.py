"""read_image: every image mode, EXIF rotation, .npy arrays, and one-line errors naming the file."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from masksmith.data.images import image_channels, read_image
from masksmith.data.masks import read_mask_values
from masksmith.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)


GRAY = RNG.integers(0, 256, (6, 10), dtype=np.uint8)


def test_rgb_and_grayscale_images(tmp_path, write_image_file):
    rgb = write_image_file(tmp_path / "rgb.png", RGB)
    gray = write_image_file(tmp_path / "gray.png", GRAY)
    assert read_image(rgb).shape == (6, 10, 3) and read_image(rgb).dtype == np.uint8
    np.testing.assert_array_equal(read_image(rgb), RGB)
    np.testing.assert_array_equal(read_image(gray), GRAY[:, :, None])  # grayscale stays 1 channel
    np.testing.assert_array_equal(read_image(gray, channels=3), np.repeat(GRAY[:, :, None], 3, axis=2))
    as_gray = read_image(rgb, channels=1)
    assert as_gray.shape == (6, 10, 1)
    np.testing.assert_array_equal(as_gray[:, :, 0], np.asarray(Image.fromarray(RGB).convert("L")))
    assert image_channels(rgb) == 3 and image_channels(gray) == 1


def test_rgba_and_la_drop_alpha(tmp_path, write_image_file):
    alpha = np.full((6, 10, 1), 7, np.uint8)
    rgba = write_image_file(tmp_path / "rgba.png", np.concatenate([RGB, alpha], axis=2))
    la = tmp_path / "la.png"
    Image.fromarray(np.stack([GRAY, alpha[:, :, 0]], axis=2), mode="LA").save(la)
    np.testing.assert_array_equal(read_image(rgba), RGB)
    np.testing.assert_array_equal(read_image(la), GRAY[:, :, None])
    assert image_channels(rgba) == 3 and image_channels(la) == 1


def test_palette_image_reads_as_rgb(tmp_path):
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 255, 0])
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 0].tolist() == [0, 255, 0]
    assert image_channels(tmp_path / "p.png") == 3


def test_16bit_image_is_scaled_by_its_maximum(tmp_path):
    wide = np.array([[0, 1000], [2000, 4000]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as stored:
        assert stored.mode.startswith("I")
    out = read_image(tmp_path / "wide.png")
    assert out.shape == (2, 2, 1) and out.dtype == np.uint8
    assert out[:, :, 0].tolist() == [[0, 64], [128, 255]]
    assert image_channels(tmp_path / "wide.png") == 1


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "cmyk.jpg")
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (6, 10, 3)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    # Stored 40 wide x 20 high with a bright top-left corner; orientation 6 = "rotate 90° clockwise to view".
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:5, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "rotated.jpg")
    assert out.shape == (40, 20, 3)  # height and width swapped
    assert out[:5, -5:].mean() > 200 and out[:5, :5].mean() < 50  # top-left went to top-right


@pytest.mark.parametrize("reader", [read_image, read_mask_values, image_channels])
def test_broken_files_give_one_line_errors_naming_the_file(tmp_path, write_image_file, reader):
    what = "mask" if reader is read_mask_values else "image"
    good = write_image_file(tmp_path / "good.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cases = {
        "empty.png": b"",
        "text.png": b"this is not an image\n",
        "truncated.png": good.read_bytes()[: len(good.read_bytes()) // 2],
    }
    for name, data in cases.items():
        if reader is image_channels and name == "truncated.png":
            continue  # the header alone is intact; the cheap check cannot see truncation
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError, match=re.escape(f"{path}: cannot read {what}:")) as info:
            reader(path)
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="file not found"):
        reader(tmp_path / "missing.png")


def test_bad_channels_argument(tmp_path, write_image_file):
    path = write_image_file(tmp_path / "a.png", RGB)
    with pytest.raises(ConfigError, match="channels"):
        read_image(path, channels=2)


def test_npy_images_read_for_prediction(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    np.save(tmp_path / "wide.npy", np.array([[0, 1000], [2000, 4000]], np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.npy"), rgb)
    assert read_image(tmp_path / "wide.npy")[:, :, 0].tolist() == [[0, 64], [128, 255]]
    assert image_channels(tmp_path / "rgb.npy") == 3 and image_channels(tmp_path / "wide.npy") == 1
