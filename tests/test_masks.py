"""read_image / read_mask_values / decode_mask / detect_encoding on tiny files and the real data."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from masksmith.data.detect import detect_encoding
from masksmith.data.encoding import MaskEncoding
from masksmith.data.images import image_channels, read_image
from masksmith.data.masks import decode_mask, read_mask, read_mask_values
from masksmith.errors import ConfigError, DataError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (6, 10), dtype=np.uint8)


# --- read_image ------------------------------------------------------------------------------


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


# --- read_mask_values ----------------------------------------------------------------------------


def test_palette_mask_gives_indices_not_colors(tmp_path):
    indices = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192])
    image.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask_values(tmp_path / "voc.png"), indices)


def test_mask_modes_l_1_16bit_and_gray_rgb(tmp_path, write_image_file):
    values = np.array([[0, 3], [1, 2]], np.uint8)
    np.testing.assert_array_equal(read_mask_values(write_image_file(tmp_path / "l.png", values)), values)
    bits = Image.fromarray(np.array([[True, False], [False, True]]))
    bits.save(tmp_path / "one.png")
    np.testing.assert_array_equal(read_mask_values(tmp_path / "one.png"), [[1, 0], [0, 1]])
    Image.fromarray(np.array([[0, 300], [7, 1]], np.uint16)).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(read_mask_values(tmp_path / "wide.png"), [[0, 300], [7, 1]])
    gray_rgb = write_image_file(tmp_path / "grayrgb.png", np.repeat(values[:, :, None] * 80, 3, axis=2))
    np.testing.assert_array_equal(read_mask_values(gray_rgb), values * 80)
    rgba = np.concatenate([np.repeat(values[:, :, None], 3, axis=2), np.full((2, 2, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_mask_values(write_image_file(tmp_path / "rgba.png", rgba)), values)


def test_color_mask_reads_as_rgb_and_an_index_encoding_refuses_it(tmp_path, write_image_file):
    color = np.zeros((4, 4, 3), np.uint8)
    color[:2, :2] = (128, 0, 0)
    path = write_image_file(tmp_path / "color.png", color)
    np.testing.assert_array_equal(read_mask_values(path), color)  # true-color RGB stays HxWx3
    with pytest.raises(DataError, match=re.escape(f"{path}: is an RGB color mask, but the masks were read as index")):
        read_mask(path, MaskEncoding("index"), 3)


def test_real_voc_palette_mask(labelme_voc_dir):
    values = read_mask_values(labelme_voc_dir / "SegmentationClass" / "2011_000003.png")
    assert values.shape == (338, 500)
    assert set(np.unique(values).tolist()) == {0, 5, 15, 255}


# --- decode_mask / read_mask ----------------------------------------------------------------------


def test_binary_decoding():
    values = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(decode_mask(values, MaskEncoding("binary"), 2), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(decode_mask(values, MaskEncoding("binary", 0), 2), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(decode_mask(values // 255, MaskEncoding("binary"), 2), [[0, 1], [1, 0]])
    # Any non-zero value is foreground when no foreground value is named; binary masks have no ignore.
    np.testing.assert_array_equal(decode_mask(np.array([[0, 7, 255]]), MaskEncoding("binary"), 2), [[0, 1, 1]])
    assert decode_mask(values, MaskEncoding("binary"), 2).dtype == np.uint8
    with pytest.raises(ConfigError, match="2 classes"):
        decode_mask(values, MaskEncoding("binary"), 3)


def test_index_decoding_keeps_ignore_and_reports_bad_values(tmp_path, write_image_file):
    values = np.array([[0, 1, 255], [2, 57, 60]], np.uint8)
    path = write_image_file(tmp_path / "m.png", values)
    ok = decode_mask(values[:1], MaskEncoding("index"), 3)
    np.testing.assert_array_equal(ok, [[0, 1, 255]])
    with pytest.raises(DataError) as info:
        read_mask(path, MaskEncoding("index"), 3)
    assert str(info.value) == f"{path}: mask values [57, 60] outside the 0..2 classes (3 classes)"
    with pytest.raises(ConfigError, match="ignore_index"):
        decode_mask(values, MaskEncoding("index"), 3, ignore_index=1)


def test_read_mask_bad_file(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(f"{path}: cannot read mask: file is empty")):
        read_mask(path, MaskEncoding("binary"), 2)


def test_mask_encoding_round_trip_and_validation():
    for encoding in (MaskEncoding("index"), MaskEncoding("binary"), MaskEncoding("binary", 0)):
        assert MaskEncoding.from_dict(encoding.to_dict()) == encoding
    with pytest.raises(ConfigError):
        MaskEncoding("rgb")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        MaskEncoding.from_dict({"foreground": 1})


# --- detect_encoding ----------------------------------------------------------------------------------


def _masks(tmp_path, write, arrays):
    return [write(tmp_path / f"m{i}.png", np.asarray(a, np.uint8)) for i, a in enumerate(arrays)]


def test_detect_binary_and_index(tmp_path, write_image_file):
    zero_255 = _masks(tmp_path / "a", write_image_file, [[[0, 255]], [[0, 0]]])
    zero_one = _masks(tmp_path / "b", write_image_file, [[[0, 1]], [[1, 1]]])
    index = _masks(tmp_path / "c", write_image_file, [[[0, 1]], [[3, 255]], [[2, 0]]])
    # The detected values are recorded, so predictions can be written back as 0/255 or 0/1.
    assert detect_encoding(zero_255) == (MaskEncoding("binary", 255, background=0), 2)
    assert detect_encoding(zero_one) == (MaskEncoding("binary", 1, background=0), 2)
    assert detect_encoding(index) == (MaskEncoding("index"), 4)  # 255 is ignore, not a class
    assert detect_encoding(zero_255, foreground=0) == (MaskEncoding("binary", 0), 2)
    with pytest.raises(DataError, match="foreground value 7 occurs in none"):
        detect_encoding(zero_255, foreground=7)
    with pytest.raises(DataError, match="no masks"):
        detect_encoding([])


def test_detect_samples_evenly_and_deterministically(tmp_path, write_image_file):
    # 9 masks; with max_files=3 the picks are the 1st, 5th and 9th.
    arrays = [[[0, 1]]] * 9
    arrays[4] = [[0, 2]]
    arrays[8] = [[0, 5]]
    arrays[6] = [[0, 9]]  # not sampled
    paths = _masks(tmp_path, write_image_file, arrays)
    assert detect_encoding(paths, max_files=3) == (MaskEncoding("index"), 6)
    assert detect_encoding(paths) == (MaskEncoding("index"), 10)


def test_detect_refuses_values_beyond_uint8_classes(tmp_path):
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(DataError, match="values up to 300"):
        detect_encoding([tmp_path / "wide.png"])


def test_real_isbi_membrane_is_foreground_zero(isbi_dir):
    masks = sorted((isbi_dir / "train" / "masks").glob("*.png"))[:3]
    encoding, num_classes = detect_encoding(masks, foreground=0)
    assert encoding == MaskEncoding("binary", 0) and num_classes == 2
    decoded = [read_mask(p, encoding, num_classes) for p in masks]
    membrane = np.mean([m.mean() for m in decoded])  # class 1 = membrane
    assert 0.17 < membrane < 0.27
    assert encoding.background == 255 and encoding.to_dict() == {"kind": "binary", "foreground": 0}
    assert detect_encoding(masks) == (MaskEncoding("binary", 255), 2)  # without a hint: 255 (interior) is foreground


def test_real_clothing_index_masks(ccp_dir):
    masks = sorted((ccp_dir / "masks").glob("*.png"))
    encoding, num_classes = detect_encoding(masks, max_files=20)
    assert encoding == MaskEncoding("index")
    assert 20 < num_classes <= 59
    mask = read_mask(masks[0], encoding, 59)
    assert mask.shape == (832, 550) and mask.max() <= 58
