"""Every common mask encoding: built as a tiny file, detected, decoded to class indices and encoded back in kind."""

from __future__ import annotations

import json
import pathlib
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksmith.data import discover as discover_module
from masksmith.data.detect import detect_encoding, discover_colors, survey_masks
from masksmith.data.discover import discover
from masksmith.data.encoding import MaskEncoding, color_table_text, describe_encoding
from masksmith.data.images import image_channels, read_image
from masksmith.data.lossy import LossyMaskWarning
from masksmith.data.masks import decode_mask, encode_mask, read_mask, read_mask_values, write_mask
from masksmith.data.palette import read_palette_file
from masksmith.errors import ConfigError, DataError

BLACK, RED, GREEN, BLUE, WHITE = (0, 0, 0), (128, 0, 0), (0, 128, 0), (0, 0, 128), (255, 255, 255)


def _classes(height: int = 12, width: int = 16, seed: int = 0, k: int = 3) -> np.ndarray:
    """A class-index mask of k classes in 4x4 blocks, every class present."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, k, (height // 4, width // 4)), np.ones((4, 4), int)).astype(np.uint8)
    mask.flat[:k] = np.arange(k)  # make sure every class occurs
    return mask


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _blocky(height: int = 160, width: int = 240, seed: int = 0, k: int = 4, block: int = 24) -> np.ndarray:
    """Large flat class regions whose edges do not fall on JPEG's 8x8 grid, plus a disc."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, k, (height // block + 1, width // block + 1)), np.ones((block, block), int))
    mask = mask[:height, :width]
    yy, xx = np.mgrid[:height, :width]
    mask[(yy - height // 2) ** 2 + (xx - width // 3) ** 2 < 35**2] = k - 1
    return mask.astype(np.uint8)


def _away_from_edges(mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """Pixels whose whole (2r+1)^2 neighbourhood has their class: where JPEG cannot smear."""
    keep = np.ones(mask.shape, bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            keep &= np.roll(np.roll(mask, dy, 0), dx, 1) == mask
    keep[:radius] = keep[-radius:] = False
    keep[:, :radius] = keep[:, -radius:] = False
    return keep


# --- RGB color masks ------------------------------------------------------------------------------------


def test_color_masks_are_detected_decoded_and_encoded_back(tmp_path):
    table = np.array([BLACK, RED, GREEN], np.uint8)
    masks = [_classes(seed=s) for s in range(3)]
    paths = [_save(tmp_path / f"m{i}.png", table[m]) for i, m in enumerate(masks)]
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
    mask = _classes()
    rgb = np.array([BLACK, RED, GREEN], np.uint8)[mask]
    rgb[0, -3:] = WHITE
    path = _save(tmp_path / "m.png", rgb)
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
    path = _save(tmp_path / "bad.png", rgb)
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
    paths = [_save(tmp_path / "a.png", first), _save(tmp_path / "b.png", second)]
    assert discover_colors(paths) == [(BLACK, 20), (BLUE, 4), (RED, 8)]
    with pytest.raises(DataError, match="more than max_colors=2"):
        discover_colors(paths, max_colors=2)


def test_color_table_text_shows_index_color_name_and_share(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:3] = RED
    rgb[9, :5] = WHITE
    path = _save(tmp_path / "m.png", rgb)
    survey = survey_masks([path], ignore_color=WHITE)
    assert survey.counts == (65, 30) and survey.ignored == 5 and survey.files == 1
    text = color_table_text(survey.encoding, survey.counts, ignored=survey.ignored)
    lines = text.splitlines()
    assert len(lines) == 4 and "share" in lines[0]
    assert re.search(r"^\s+0\s+\(0, 0, 0\)\s+#000000\s+class_0\s+65\.0%$", lines[1])
    assert re.search(r"^\s+1\s+\(128, 0, 0\)\s+#800000\s+class_1\s+30\.0%$", lines[2])
    assert "(ignore)" in lines[3] and lines[3].endswith("5.0%")
    # discover_colors output works as the counts too.
    assert "65.0%" in color_table_text(survey.encoding, discover_colors([path])[:2], ignored=5)


def test_a_gray_mask_among_color_masks_reads_as_gray_colors(tmp_path):
    color = _save(tmp_path / "a.png", np.array([BLACK, RED], np.uint8)[_classes(k=2)])
    empty = _save(tmp_path / "b.png", np.zeros((12, 16, 3), np.uint8))  # all black: stored R = G = B
    encoding, num_classes = detect_encoding([color, empty])
    assert encoding.kind == "color" and num_classes == 2
    assert read_mask(empty, encoding, num_classes).max() == 0


def test_palette_png_masks_decode_through_a_color_table(tmp_path):
    indices = _classes()
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


def test_color_encoding_validation_and_old_bundle_dicts():
    assert MaskEncoding.from_dict({"kind": "binary", "foreground": 0}) == MaskEncoding("binary", 0, 255)
    assert MaskEncoding.from_dict({"kind": "index", "foreground": None}) == MaskEncoding("index")
    lossy = MaskEncoding("color", colors=[[0, 0, 0], [1, 2, 3]], names=["a", "b"], ignore_color=[9, 9, 9], lossy=True)
    assert lossy.colors == ((0, 0, 0), (1, 2, 3)) and lossy.ignore_color == (9, 9, 9)
    assert lossy.to_dict() == {"kind": "color", "foreground": None, "colors": [[0, 0, 0], [1, 2, 3]],
                               "names": ["a", "b"], "ignore_color": [9, 9, 9], "lossy": True}
    assert MaskEncoding.from_dict(lossy.to_dict()) == lossy
    for bad in (
        {"kind": "color"},
        {"kind": "color", "colors": [BLACK, BLACK]},
        {"kind": "color", "colors": [BLACK, (256, 0, 0)]},
        {"kind": "color", "colors": [BLACK], "names": ["a", "b"]},
        {"kind": "color", "colors": [BLACK], "ignore_color": BLACK},
        {"kind": "color", "colors": [BLACK], "foreground": 1},
        {"kind": "index", "colors": [BLACK]},
        {"kind": "binary", "foreground": 3, "background": 3},
    ):
        with pytest.raises(ConfigError):
            MaskEncoding(**bad)
    with pytest.raises(ConfigError, match="keys"):
        MaskEncoding.from_dict({"kind": "color", "colours": [[0, 0, 0]]})


def test_describe_encoding_lines():
    assert describe_encoding(MaskEncoding("index")) == "index masks"
    assert describe_encoding(MaskEncoding("binary", 0, 255)) == "binary masks, foreground value 0 (background 255)"
    assert describe_encoding(MaskEncoding("binary")) == "binary masks, foreground = any non-zero value"
    colors = [(i, 0, 0) for i in range(6)]
    assert describe_encoding(MaskEncoding("color", colors=colors)) == "RGB color masks, 6 colors"
    assert "lossy" in describe_encoding(MaskEncoding("binary", 255, lossy=True))


# --- palette files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("labelmap.txt",
         "# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\ntraffic light:250,170,30::\n"),
        ("classes.csv", "name,r,g,b\nbackground,0,0,0\nroad,128,64,128\ntraffic light,250,170,30\n"),
        ("colors.txt", "0 0 0 background\n\n# a comment\n128 64 128 road\n250 170 30 traffic light\n"),
        ("colors2.txt", "background 0 0 0\nroad 128 64 128\ntraffic light 250 170 30\n"),
    ],
)
def test_palette_file_forms(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    names, colors = read_palette_file(path)
    assert names == ["background", "road", "traffic light"]
    assert colors == [(0, 0, 0), (128, 64, 128), (250, 170, 30)]


def test_palette_file_without_names_and_with_a_bom(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeff0,0,0\n255,0,0\n".encode())
    assert read_palette_file(path) == (["class_0", "class_1"], [(0, 0, 0), (255, 0, 0)])


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("background,0,0,0\nroad,12,x,3\n", 2, "cannot read"),
        ("background,0,0,0\nroad,300,0,0\n", 2, "must be 0..255"),
        ("background,0,0,0\nroad,0,0\n", 2, "cannot read"),
        ("background,0,0,0\n# ok\nroad,0,0,0\n", 3, "already used by 'background' on line 1"),
        ("background,0,0,0\nbackground,1,1,1\n", 2, "class name 'background' is already used on line 1"),
        ("background:0,0,0::\nroad:::\n", 2, "has no color"),
        ("name,r,g,b\nbackground,0,0,0\njust words here\n", 3, "cannot read"),
    ],
)
def test_bad_palette_lines_name_the_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "palette.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(f"{path}: line {line}: ")) as info:
        read_palette_file(path)
    assert what in str(info.value) and "\n" not in str(info.value)


def test_empty_and_missing_palette_files(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="lists no classes"):
        read_palette_file(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="file not found"):
        read_palette_file(tmp_path / "missing.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DataError, match="cannot read palette file"):
        read_palette_file(tmp_path / "binary.txt")


def test_palette_ignore_color_leaves_the_class_list(tmp_path):
    palette = tmp_path / "labelmap.txt"
    palette.write_text("background:0,0,0::\nvoid:255,255,255::\ncar:128,0,0::\n")
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0] = WHITE
    rgb[1] = RED
    path = _save(tmp_path / "m.png", rgb)
    encoding, num_classes = detect_encoding([path], palette=palette, ignore_color=WHITE)
    assert encoding.names == ("background", "car") and num_classes == 2
    assert read_mask(path, encoding, 2)[:2].tolist() == [[255] * 4, [1] * 4]


# --- GIF, palette and 16-bit masks ----------------------------------------------------------------------------


def test_carvana_style_gif_masks_pair_and_decode_as_binary(tmp_path):
    truth = _classes(k=2)
    carvana = Image.fromarray(truth, mode="P")  # indices 0/1, black/white palette
    carvana.putpalette([*BLACK, *WHITE])
    carvana.save(tmp_path / "car_mask.gif")
    _save(tmp_path / "car.jpg", np.full((12, 16, 3), 90, np.uint8))
    samples = discover(tmp_path)["all"]  # the one-folder layout pairs car.jpg with car_mask.gif
    assert [(s.image.name, s.mask.name) for s in samples] == [("car.jpg", "car_mask.gif")]
    encoding, num_classes = detect_encoding([samples[0].mask])
    assert encoding == MaskEncoding("binary", 255, 0) and num_classes == 2  # read by the palette's colors
    np.testing.assert_array_equal(read_mask(samples[0].mask, encoding, 2), truth)


def test_gif_masks_saved_from_grayscale(tmp_path):
    truth = _classes(k=2)
    for name, values in (("a.gif", truth), ("b.gif", truth * 255)):
        _save(tmp_path / name, values)  # PIL stores a palette of the used grays, in its own order
        encoding, num_classes = detect_encoding([tmp_path / name])
        assert encoding.kind == "binary" and num_classes == 2
        np.testing.assert_array_equal(read_mask(tmp_path / name, encoding, 2), truth)
    all_white = _save(tmp_path / "c.gif", np.full((4, 4), 255, np.uint8))
    assert read_mask(all_white, MaskEncoding("binary", 255), 2).min() == 1  # not fooled by palette index 0


def test_16bit_png_masks(tmp_path):
    index = np.array([[0, 1, 2], [3, 255, 0]], np.uint16)
    _save(tmp_path / "i.png", index)
    assert Image.open(tmp_path / "i.png").mode.startswith("I")
    assert detect_encoding([tmp_path / "i.png"]) == (MaskEncoding("index"), 4)
    np.testing.assert_array_equal(read_mask(tmp_path / "i.png", MaskEncoding("index"), 4), index)

    binary = (_classes(k=2).astype(np.uint16)) * 65535
    _save(tmp_path / "b.png", binary)
    encoding, num_classes = detect_encoding([tmp_path / "b.png"])
    assert encoding == MaskEncoding("binary", 65535, 0) and num_classes == 2
    decoded = read_mask(tmp_path / "b.png", encoding, 2)
    np.testing.assert_array_equal(decoded, binary // 65535)
    back = encode_mask(decoded, encoding)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, binary)
    write_mask(tmp_path / "out" / "b.png", decoded, encoding)
    np.testing.assert_array_equal(read_mask_values(tmp_path / "out" / "b.png"), binary)


def test_16bit_values_beyond_255_are_refused_with_the_reason(tmp_path):
    _save(tmp_path / "instances.png", np.array([[0, 1, 2], [300, 301, 1000]], np.uint16))
    with pytest.raises(DataError) as info:
        detect_encoding([tmp_path / "instances.png"])
    message = str(info.value)
    assert "values up to 1000" in message and "uint8" in message and "at most 255 classes" in message


# --- TIFF masks ----------------------------------------------------------------------------------------------


def test_tiff_masks_8_and_16_bit_and_rgb(tmp_path):
    index = _classes(k=4)
    _save(tmp_path / "i.tif", index)
    assert detect_encoding([tmp_path / "i.tif"]) == (MaskEncoding("index"), 4)
    np.testing.assert_array_equal(read_mask(tmp_path / "i.tif", MaskEncoding("index"), 4), index)

    binary = _classes(k=2).astype(np.uint16) * 65535
    _save(tmp_path / "b.tiff", binary, compression="tiff_lzw")
    encoding, _ = detect_encoding([tmp_path / "b.tiff"])
    assert encoding == MaskEncoding("binary", 65535, 0)
    np.testing.assert_array_equal(read_mask(tmp_path / "b.tiff", encoding, 2), binary // 65535)

    table = np.array([BLACK, RED, GREEN], np.uint8)
    _save(tmp_path / "c.tif", table[index % 3])
    encoding, num_classes = detect_encoding([tmp_path / "c.tif"])
    assert encoding.colors == (BLACK, GREEN, RED)
    write_mask(tmp_path / "out.tif", read_mask(tmp_path / "c.tif", encoding, num_classes), encoding)
    np.testing.assert_array_equal(read_mask_values(tmp_path / "out.tif"), table[index % 3])


def test_truncated_and_multipage_tiff(tmp_path):
    good = _save(tmp_path / "good.tif", np.random.default_rng(0).integers(0, 4, (200, 200), dtype=np.uint8))
    data = good.read_bytes()
    for cut in (len(data) // 2, 100):
        bad = tmp_path / f"cut{cut}.tif"
        bad.write_bytes(data[:cut])
        with pytest.raises(DataError, match=re.escape(f"{bad}: cannot read mask:")), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's own "Corrupt EXIF data" noise
            read_mask(bad, MaskEncoding("index"), 4)
    pages = [Image.fromarray(np.zeros((4, 4), np.uint8)), Image.fromarray(np.ones((4, 4), np.uint8))]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(DataError, match="holds 2 pages/frames; a mask is one image"):
        read_mask_values(tmp_path / "stack.tif")


# --- .npy masks ----------------------------------------------------------------------------------------------


def test_npy_masks_index_bool_and_16bit(tmp_path):
    index = _classes(k=5).astype(np.int64)
    np.save(tmp_path / "i.npy", index)
    assert detect_encoding([tmp_path / "i.npy"]) == (MaskEncoding("index"), 5)
    np.testing.assert_array_equal(read_mask(tmp_path / "i.npy", MaskEncoding("index"), 5), index)

    truth = _classes(k=2)
    np.save(tmp_path / "b.npy", truth.astype(bool))
    encoding, num_classes = detect_encoding([tmp_path / "b.npy"])
    assert encoding == MaskEncoding("binary", 1, 0) and num_classes == 2
    np.testing.assert_array_equal(read_mask(tmp_path / "b.npy", encoding, 2), truth)
    write_mask(tmp_path / "out.npy", truth, encoding)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy", allow_pickle=False), truth)

    np.save(tmp_path / "w.npy", truth.astype(np.uint16) * 65535)
    assert detect_encoding([tmp_path / "w.npy"])[0] == MaskEncoding("binary", 65535)


class _Trap:
    """Unpickling this creates a file: proof that a .npy was (wrongly) unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_npy_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    objects = np.empty((2, 2), dtype=object)
    objects[:] = _Trap(marker)
    np.save(tmp_path / "evil.npy", objects, allow_pickle=True)
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(_Trap(marker)))  # a bare pickle wearing .npy
    for name in ("evil.npy", "raw.npy"):
        path = tmp_path / name
        for call, arg in ((read_mask_values, path), (detect_encoding, [path]), (read_image, path)):
            with pytest.raises(DataError, match=re.escape(f"{path}: cannot read")) as info:
                call(arg)
            assert "pickled" in str(info.value)
    assert not marker.exists()


def test_bad_npy_arrays(tmp_path):
    cases = {
        "3d.npy": (np.zeros((4, 4, 3), np.uint8), "must be 2-D (height x width), got shape (4, 4, 3)"),
        "float.npy": (np.zeros((4, 4), np.float32), "dtype float32; save class indices as integers"),
        "complex.npy": (np.zeros((4, 4), np.complex64), "dtype complex64"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}: mask array")) as info:
            read_mask_values(tmp_path / name)
        assert message in str(info.value)
    np.save(tmp_path / "whole.npy", np.zeros((64, 64), np.int32))
    data = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'cut.npy'}: cannot read mask:")):
        read_mask_values(tmp_path / "cut.npy")
    np.savez(tmp_path / "archive.npz", a=np.zeros((2, 2)))
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    with pytest.raises(DataError, match="an .npz archive"):
        read_mask_values(tmp_path / "archive.npy")


def test_npy_images_read_for_prediction(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    np.save(tmp_path / "wide.npy", np.array([[0, 1000], [2000, 4000]], np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.npy"), rgb)
    assert read_image(tmp_path / "wide.npy")[:, :, 0].tolist() == [[0, 64], [128, 255]]
    assert image_channels(tmp_path / "rgb.npy") == 3 and image_channels(tmp_path / "wide.npy") == 1


def test_npy_masks_pair_once_discover_lists_npy(tmp_path, monkeypatch):
    # discover.py lists masks with IMAGE_EXTENSIONS; with ".npy" added there, .npy masks pair by stem.
    extensions = discover_module.IMAGE_EXTENSIONS
    if ".npy" not in extensions:
        monkeypatch.setattr(discover_module, "IMAGE_EXTENSIONS", (*extensions, ".npy"))
    for name in ("a", "b"):
        _save(tmp_path / "images" / f"{name}.png", np.zeros((12, 16, 3), np.uint8))
        (tmp_path / "masks").mkdir(exist_ok=True)
        np.save(tmp_path / "masks" / f"{name}.npy", _classes(k=3))
    samples = discover(tmp_path)["all"]
    assert [(s.image.name, s.mask.name) for s in samples] == [("a.png", "a.npy"), ("b.png", "b.npy")]
    encoding, num_classes = detect_encoding([s.mask for s in samples])
    assert (encoding, num_classes) == (MaskEncoding("index"), 3)


# --- empty files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".gif", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp", ".npy"])
def test_empty_file_of_each_suffix(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    expected = re.escape(f"{path}: cannot read mask: file is empty (0 bytes)")
    with pytest.raises(DataError, match=expected):
        read_mask(path, MaskEncoding("index"), 3)
    with pytest.raises(DataError, match=expected):
        detect_encoding([path])
    with pytest.raises(DataError, match=re.escape(f"{path}: cannot read image: file is empty")):
        read_image(path)


# --- lossy JPEG masks ------------------------------------------------------------------------------------------


def _read_with_warning(path: Path, encoding: MaskEncoding, num_classes: int) -> tuple[np.ndarray, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = read_mask(path, encoding, num_classes)
    lossy = [str(w.message) for w in caught if issubclass(w.category, LossyMaskWarning)]
    assert len(lossy) == 1, [str(w.message) for w in caught]
    return decoded, lossy[0]


def test_jpeg_color_masks_snap_to_the_class_colors(tmp_path):
    table = np.array([BLACK, (30, 160, 60), (40, 60, 220), (200, 30, 30)], np.uint8)  # in packed-value order
    truths = [_blocky(seed=s) for s in range(2)]
    paths = [_save(tmp_path / f"m{i}.jpg", table[t], quality=75) for i, t in enumerate(truths)]
    encoding, num_classes = detect_encoding(paths)
    assert encoding.kind == "color" and encoding.lossy and num_classes == 4
    found = np.asarray(encoding.colors, int)
    assert np.abs(found - table.astype(int)).max() <= 8  # the four flat colors, near their true values
    decoded, message = _read_with_warning(paths[0], encoding, num_classes)
    assert re.fullmatch(re.escape(f"{paths[0]}: lossy JPEG mask, ") + r"\d+ pixels \(\d+\.\d%\) snapped to the "
                        r"nearest class color", message)
    inside = _away_from_edges(truths[0])
    assert (decoded[inside] == truths[0][inside]).mean() >= 0.99
    # With the exact colors from a palette file the same holds.
    exact = MaskEncoding("color", colors=[tuple(c) for c in table.tolist()])
    decoded, _ = _read_with_warning(paths[1], exact, 4)
    inside = _away_from_edges(truths[1])
    assert (decoded[inside] == truths[1][inside]).mean() >= 0.99


def test_jpeg_binary_masks_threshold_at_the_midpoint(tmp_path):
    truth = _blocky(k=2)
    path = _save(tmp_path / "a.jpg", truth * 255, quality=75)
    encoding, num_classes = detect_encoding([path])
    assert encoding == MaskEncoding("binary", 255, 0, lossy=True) and num_classes == 2
    decoded, message = _read_with_warning(path, encoding, 2)
    assert message.startswith(f"{path}: lossy JPEG mask, ") and "nearest class value" in message
    inside = _away_from_edges(truth)
    assert (decoded[inside] == truth[inside]).mean() >= 0.99
    assert (decoded == truth).mean() >= 0.98
    # Membrane-style: 0 is the foreground; a JPEG still snaps to 0 / 255.
    flipped = _save(tmp_path / "b.jpg", (1 - truth) * 255, quality=75)
    encoding, _ = detect_encoding([flipped], foreground=0)
    assert encoding == MaskEncoding("binary", 0, 255, lossy=True)
    decoded, _ = _read_with_warning(flipped, encoding, 2)
    assert (decoded[inside] == truth[inside]).mean() >= 0.99


def test_a_jpeg_mask_among_png_masks_is_snapped_by_its_suffix(tmp_path):
    truth = _blocky(k=2)
    png = _save(tmp_path / "a.png", truth * 255)
    jpg = _save(tmp_path / "b.jpg", truth * 255, quality=75)
    encoding, _ = detect_encoding([png])
    assert not encoding.lossy
    decoded, message = _read_with_warning(jpg, encoding, 2)
    assert "lossy JPEG mask" in message and (decoded == truth).mean() >= 0.98


def test_png_with_jpeg_artifacts_is_detected_as_lossy(tmp_path):
    table = np.array([BLACK, (30, 160, 60), (200, 30, 30)], np.uint8)  # in packed-value order
    truth = _blocky(k=3)
    _save(tmp_path / "a.jpg", table[truth], quality=75)
    artifacts = _save(tmp_path / "a.png", np.asarray(Image.open(tmp_path / "a.jpg")))  # once JPEG, now PNG
    encoding, num_classes = detect_encoding([artifacts])
    assert encoding.lossy and num_classes == 3
    decoded, message = _read_with_warning(artifacts, encoding, 3)
    assert message.startswith(f"{artifacts}: lossy mask, ")
    inside = _away_from_edges(truth)
    assert (decoded[inside] == truth[inside]).mean() >= 0.99


def test_a_lossy_mask_with_a_large_unknown_color_is_still_an_error(tmp_path):
    truth = _blocky(k=2)
    rgb = np.array([BLACK, RED], np.uint8)[truth]
    rgb[:40, :40] = (0, 200, 255)  # a region of a class the table does not know
    path = _save(tmp_path / "a.jpg", rgb, quality=90)
    with pytest.raises(DataError, match="far from every class color"):
        read_mask(path, MaskEncoding("color", colors=[BLACK, RED]), 2)


# --- encoding back, round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "num_classes"),
    [
        (MaskEncoding("index"), 5),
        (MaskEncoding("binary"), 2),
        (MaskEncoding("binary", 1, 0), 2),
        (MaskEncoding("binary", 0, 255), 2),
        (MaskEncoding("binary", 65535, 0), 2),
        (MaskEncoding("color", colors=[BLACK, RED, GREEN, BLUE, WHITE]), 5),
        (MaskEncoding("color", colors=[BLACK, RED], ignore_color=WHITE), 2),
    ],
)
def test_decode_of_encode_is_the_identity(tmp_path, encoding, num_classes):
    mask = _classes(k=num_classes)
    if encoding.kind == "index" or encoding.ignore_color is not None:
        mask[0, 0] = 255  # ignore survives where the encoding can store it
    values = encode_mask(mask, encoding)
    np.testing.assert_array_equal(decode_mask(values, encoding, num_classes), mask)
    path = write_mask(tmp_path / "m.png", mask, encoding)
    np.testing.assert_array_equal(read_mask(path, encoding, num_classes), mask)


def test_binary_encodes_back_to_the_datasets_own_values():
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    assert encode_mask(mask, MaskEncoding("binary", 0, 255)).tolist() == [[255, 0], [0, 255]]  # ISBI membranes
    assert encode_mask(mask, MaskEncoding("binary", 1, 0)).tolist() == [[0, 1], [1, 0]]
    assert encode_mask(mask, MaskEncoding("binary")).tolist() == [[0, 255], [255, 0]]


def test_encode_refuses_what_the_encoding_cannot_hold(tmp_path):
    with pytest.raises(DataError, match="classes 0 and 1 only"):
        encode_mask(np.array([[0, 2]]), MaskEncoding("binary", 255))
    with pytest.raises(DataError, match="no color in the table of 2 classes"):
        encode_mask(np.array([[0, 2]]), MaskEncoding("color", colors=[BLACK, RED]))
    with pytest.raises(DataError, match="no ignore color"):
        encode_mask(np.array([[0, 255]]), MaskEncoding("color", colors=[BLACK, RED]))
    with pytest.raises(DataError, match="2-D integer"):
        encode_mask(np.zeros((2, 2), np.float32), MaskEncoding("index"))
    with pytest.raises(ConfigError, match="lossless"):
        write_mask(tmp_path / "m.jpg", np.zeros((2, 2), np.uint8), MaskEncoding("index"))
    assert not list(tmp_path.iterdir())


def test_read_mask_values_rgb_view(tmp_path):
    indices = np.array([[0, 1]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([*BLACK, *RED])
    image.save(tmp_path / "p.png")
    assert read_mask_values(tmp_path / "p.png").tolist() == [[0, 1]]
    assert read_mask_values(tmp_path / "p.png", rgb=True).tolist() == [[list(BLACK), list(RED)]]


def test_detection_skips_unreadable_masks_and_reports_them(tmp_path):
    good = [_save(tmp_path / f"m{i}.png", _classes(k=2) * 255) for i in range(2)]
    broken = tmp_path / "m9.png"
    broken.write_text("not a png")
    survey = survey_masks([*good, broken])
    assert survey.encoding == MaskEncoding("binary", 255) and survey.files == 2
    assert len(survey.unreadable) == 1 and survey.unreadable[0].startswith(f"{broken}: cannot read mask")
    with pytest.raises(DataError, match=re.escape(f"{broken}: cannot read mask")):
        detect_encoding([broken])  # nothing readable: the first error


def test_table_text_for_binary_and_index_with_names():
    binary = color_table_text(MaskEncoding("binary", 0, 255), [75, 25])
    assert re.search(r"0\s+value 255\s+background\s+75\.0%", binary)
    assert re.search(r"1\s+value 0\s+foreground\s+25\.0%", binary)
    index = color_table_text(MaskEncoding("index"), [1, 3], names=["sky", "road"])
    assert re.search(r"1\s+value 1\s+road\s+75\.0%", index)
    with pytest.raises(ConfigError, match="3 class names for a table of 2 classes"):
        color_table_text(MaskEncoding("binary"), [1, 1], names=["a", "b", "c"])
