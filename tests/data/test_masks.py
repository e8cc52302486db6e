"""read_mask_values / decode_mask / read_mask / encode_mask: every mask file kind (palette, 16-bit, GIF, TIFF,
.npy, empty), decoded to class indices and encoded back in kind."""

from __future__ import annotations

import pathlib
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksmith.data.detect import detect_encoding
from masksmith.data.discover import discover
from masksmith.data.encoding import MaskEncoding
from masksmith.data.images import read_image
from masksmith.data.masks import decode_mask, encode_mask, read_mask, read_mask_values, write_mask
from masksmith.errors import ConfigError, DataError
from tests.conftest import save_array
from tests.data.mask_files import BLACK, BLUE, GREEN, RED, WHITE, class_blocks

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


def test_carvana_style_gif_masks_pair_and_decode_as_binary(tmp_path):
    truth = class_blocks(k=2)
    carvana = Image.fromarray(truth, mode="P")  # indices 0/1, black/white palette
    carvana.putpalette([*BLACK, *WHITE])
    carvana.save(tmp_path / "car_mask.gif")
    save_array(tmp_path / "car.jpg", np.full((12, 16, 3), 90, np.uint8))
    samples = discover(tmp_path)["all"]  # the one-folder layout pairs car.jpg with car_mask.gif
    assert [(s.image.name, s.mask.name) for s in samples] == [("car.jpg", "car_mask.gif")]
    encoding, num_classes = detect_encoding([samples[0].mask])
    assert encoding == MaskEncoding("binary", 255, 0) and num_classes == 2  # read by the palette's colors
    np.testing.assert_array_equal(read_mask(samples[0].mask, encoding, 2), truth)


def test_gif_masks_saved_from_grayscale(tmp_path):
    truth = class_blocks(k=2)
    for name, values in (("a.gif", truth), ("b.gif", truth * 255)):
        save_array(tmp_path / name, values)  # PIL stores a palette of the used grays, in its own order
        encoding, num_classes = detect_encoding([tmp_path / name])
        assert encoding.kind == "binary" and num_classes == 2
        np.testing.assert_array_equal(read_mask(tmp_path / name, encoding, 2), truth)
    all_white = save_array(tmp_path / "c.gif", np.full((4, 4), 255, np.uint8))
    assert read_mask(all_white, MaskEncoding("binary", 255), 2).min() == 1  # not fooled by palette index 0


def test_16bit_png_masks(tmp_path):
    index = np.array([[0, 1, 2], [3, 255, 0]], np.uint16)
    save_array(tmp_path / "i.png", index)
    assert Image.open(tmp_path / "i.png").mode.startswith("I")
    assert detect_encoding([tmp_path / "i.png"]) == (MaskEncoding("index"), 4)
    np.testing.assert_array_equal(read_mask(tmp_path / "i.png", MaskEncoding("index"), 4), index)

    binary = (class_blocks(k=2).astype(np.uint16)) * 65535
    save_array(tmp_path / "b.png", binary)
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
    save_array(tmp_path / "instances.png", np.array([[0, 1, 2], [300, 301, 1000]], np.uint16))
    with pytest.raises(DataError) as info:
        detect_encoding([tmp_path / "instances.png"])
    message = str(info.value)
    assert "values up to 1000" in message and "uint8" in message and "at most 255 classes" in message


def test_tiff_masks_8_and_16_bit_and_rgb(tmp_path):
    index = class_blocks(k=4)
    save_array(tmp_path / "i.tif", index)
    assert detect_encoding([tmp_path / "i.tif"]) == (MaskEncoding("index"), 4)
    np.testing.assert_array_equal(read_mask(tmp_path / "i.tif", MaskEncoding("index"), 4), index)

    binary = class_blocks(k=2).astype(np.uint16) * 65535
    save_array(tmp_path / "b.tiff", binary, compression="tiff_lzw")
    encoding, _ = detect_encoding([tmp_path / "b.tiff"])
    assert encoding == MaskEncoding("binary", 65535, 0)
    np.testing.assert_array_equal(read_mask(tmp_path / "b.tiff", encoding, 2), binary // 65535)

    table = np.array([BLACK, RED, GREEN], np.uint8)
    save_array(tmp_path / "c.tif", table[index % 3])
    encoding, num_classes = detect_encoding([tmp_path / "c.tif"])
    assert encoding.colors == (BLACK, GREEN, RED)
    write_mask(tmp_path / "out.tif", read_mask(tmp_path / "c.tif", encoding, num_classes), encoding)
    np.testing.assert_array_equal(read_mask_values(tmp_path / "out.tif"), table[index % 3])


def test_truncated_and_multipage_tiff(tmp_path):
    good = save_array(tmp_path / "good.tif", np.random.default_rng(0).integers(0, 4, (200, 200), dtype=np.uint8))
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


def test_npy_masks_index_bool_and_16bit(tmp_path):
    index = class_blocks(k=5).astype(np.int64)
    np.save(tmp_path / "i.npy", index)
    assert detect_encoding([tmp_path / "i.npy"]) == (MaskEncoding("index"), 5)
    np.testing.assert_array_equal(read_mask(tmp_path / "i.npy", MaskEncoding("index"), 5), index)

    truth = class_blocks(k=2)
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
    mask = class_blocks(k=num_classes)
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
