"""detect_encoding and the color survey: binary, index, RGB color and palette masks told apart from a sample of
files; unknown colors, strays and odd masks named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksmith.data.detect import detect_encoding, discover_colors, survey_masks
from masksmith.data.encoding import MaskEncoding, describe_encoding
from masksmith.data.masks import encode_mask, read_mask
from masksmith.errors import DataError
from tests.conftest import save_array
from tests.data.mask_files import BLACK, BLUE, GREEN, RED, WHITE, class_blocks
from tests.helpers import write_photos


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


def test_color_masks_are_detected_decoded_and_encoded_back(tmp_path):
    table = np.array([BLACK, RED, GREEN], np.uint8)
    masks = [class_blocks(seed=s) for s in range(3)]
    paths = [save_array(tmp_path / f"m{i}.png", table[m]) for i, m in enumerate(masks)]
    encoding, num_classes = detect_encoding(paths)
    # Numbered by packed 0xRRGGBB: black, then green 0x008000, then red 0x800000.
    assert encoding == MaskEncoding("color", colors=[BLACK, GREEN, RED]) and num_classes == 3
    assert describe_encoding(encoding) == "RGB color masks, 3 colors"
    renumber = np.array([0, 2, 1], np.uint8)  # our class -> the detected class
    for path, mask in zip(paths, masks):
        decoded = read_mask(path, encoding, num_classes)
        assert decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, renumber[mask])
        np.testing.assert_array_equal(encode_mask(decoded, encoding), table[mask])  # the file's own colors
    # The encoding travels in the bundle as JSON and comes back equal.
    assert MaskEncoding.from_dict(json.loads(json.dumps(encoding.to_dict()))) == encoding


def test_ignore_color_reads_as_ignore_index_and_writes_back(tmp_path):
    mask = class_blocks()
    rgb = np.array([BLACK, RED, GREEN], np.uint8)[mask]
    rgb[0, -3:] = WHITE
    path = save_array(tmp_path / "m.png", rgb)
    encoding, num_classes = detect_encoding([path], ignore_color=WHITE)
    assert encoding.ignore_color == WHITE and num_classes == 3 and WHITE not in encoding.colors
    decoded = read_mask(path, encoding, num_classes)
    assert decoded[0, -3:].tolist() == [255, 255, 255]
    np.testing.assert_array_equal(encode_mask(decoded, encoding), rgb)
    assert "ignore color (255, 255, 255)" in describe_encoding(encoding)
    # Without the ignore color, white is just one more class.
    assert detect_encoding([path])[1] == 4


def test_unknown_colors_are_a_clear_error_listing_them_with_pixel_counts(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:, 0] = RED
    for i in range(1, 8):  # 7 unknown colors, column i holding i+1 pixels of color (i, 200, 0)
        rgb[: i + 1, i] = (i, 200, 0)
    path = save_array(tmp_path / "bad.png", rgb)
    encoding = MaskEncoding("color", colors=[BLACK, RED], names=["background", "car"])
    with pytest.raises(DataError) as info:
        read_mask(path, encoding, 2)
    message = str(info.value)
    assert message.startswith(f"{path}: 7 color(s) not in the color table")
    assert "(7, 200, 0) × 8 px, (6, 200, 0) × 7 px" in message and "(and 2 more)" in message
    assert "(2, 200, 0)" not in message and "\n" not in message  # up to 5 listed, most pixels first


def test_discover_colors_counts_and_orders_by_packed_value(tmp_path):
    first = np.zeros((4, 4, 3), np.uint8)
    first[0] = BLUE
    second = np.zeros((4, 4, 3), np.uint8)
    second[:2] = RED
    paths = [save_array(tmp_path / "a.png", first), save_array(tmp_path / "b.png", second)]
    assert discover_colors(paths) == [(BLACK, 20), (BLUE, 4), (RED, 8)]
    with pytest.raises(DataError, match="more than max_colors=2"):
        discover_colors(paths, max_colors=2)


def test_a_gray_mask_among_color_masks_reads_as_gray_colors(tmp_path):
    color = save_array(tmp_path / "a.png", np.array([BLACK, RED], np.uint8)[class_blocks(k=2)])
    empty = save_array(tmp_path / "b.png", np.zeros((12, 16, 3), np.uint8))  # all black: stored R = G = B
    encoding, num_classes = detect_encoding([color, empty])
    assert encoding.kind == "color" and num_classes == 2
    assert read_mask(empty, encoding, num_classes).max() == 0


def test_palette_png_masks_decode_through_a_color_table(tmp_path):
    indices = class_blocks()
    image = Image.fromarray(indices, mode="P")
    image.putpalette([*BLACK, *RED, *GREEN])
    image.save(tmp_path / "voc.png")
    palette = tmp_path / "labelmap.txt"
    palette.write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nplane:128,0,0::\nbike:0,128,0::\n")
    encoding, num_classes = detect_encoding([tmp_path / "voc.png"], palette=palette)
    assert encoding.names == ("background", "plane", "bike") and num_classes == 3
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png", encoding, 3), indices)
    # Without a palette file a palette PNG is an index mask, as before.
    assert detect_encoding([tmp_path / "voc.png"]) == (MaskEncoding("index"), 3)


def test_detection_skips_unreadable_masks_and_reports_them(tmp_path):
    good = [save_array(tmp_path / f"m{i}.png", class_blocks(k=2) * 255) for i in range(2)]
    broken = tmp_path / "m9.png"
    broken.write_text("not a png")
    survey = survey_masks([*good, broken])
    assert survey.encoding == MaskEncoding("binary", 255) and survey.files == 2
    assert len(survey.unreadable) == 1 and survey.unreadable[0].startswith(f"{broken}: cannot read mask")
    with pytest.raises(DataError, match=re.escape(f"{broken}: cannot read mask")):
        detect_encoding([broken])  # nothing readable: the first error


def _stray_dataset(root: Path) -> Path:
    """Binary masks, foreground 0 on background 255, two of three with a 10x5 patch of stray 128s."""
    write_photos(root / "images", ["a0.png", "a1.png", "a2.png"], size=(40, 40))
    (root / "masks").mkdir()
    for index in range(3):
        mask = np.full((40, 40), 255, np.uint8)
        mask[5:15, 5:15] = 0
        if index:
            mask[20:25, 20:30] = 128
        Image.fromarray(mask).save(root / "masks" / f"a{index}.png")
    return root


def test_stray_binary_values_are_counted_in_a_warning(tmp_path):
    from masksmith.data.check import check_dataset
    from masksmith.data.detect import StrayMaskValuesWarning, detect_encoding

    root = _stray_dataset(tmp_path / "data")
    masks = sorted((root / "masks").iterdir())
    with pytest.warns(StrayMaskValuesWarning, match=r"100 pixels in 2 of the 3 masks .*\(128\).*count as background"):
        encoding, _ = detect_encoding(masks, foreground=0)
    assert (encoding.foreground, encoding.background) == (0, 255)
    report = check_dataset(root, foreground=0, workers=1, progress=False)
    [problem] = report.by_code("stray_binary_values")
    assert problem.severity == "warning"
    assert problem.message.startswith("100 pixels in 2 of 3 masks have values (128)")
    assert [Path(p).name for p in problem.paths] == ["a1.png", "a2.png"]
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1  # a warning, not an error
    clean = check_dataset(root, workers=1, progress=False)  # no --foreground: 3 index classes, nothing stray
    assert not clean.by_code("stray_binary_values")


def test_one_rgb_mask_among_binary_masks_is_named(tmp_path):
    from masksmith.data.check import check_dataset
    from masksmith.data.detect import detect_encoding
    from masksmith.errors import DataError

    root = _stray_dataset(tmp_path / "data")
    odd = np.zeros((40, 40, 3), np.uint8)
    odd[5:15, 5:15] = (255, 0, 0)
    Image.fromarray(odd).save(root / "masks" / "a1.png")
    with pytest.raises(DataError, match=r"a1\.png: is an RGB color mask"):
        detect_encoding(sorted((root / "masks").iterdir()), foreground=0)
    [problem] = check_dataset(root, foreground=0, workers=1, progress=False).by_code("mask_encoding")
    assert "a1.png: is an RGB color mask" in problem.message
