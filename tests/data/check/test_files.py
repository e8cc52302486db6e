"""The check reads every file: broken, lying, looping, oversized and oddly named files are reported by name,
never crash or hang."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from masksmith.data.check import CheckReport, check_dataset, display_path, print_report
from masksmith.data.limits import ENV_VAR
from tests.conftest import save_array
from tests.helpers import make_shapes_dataset

GOOD = ("good1", "good2")


def _dataset(root: Path, size: tuple[int, int] = (40, 48)) -> Path:
    """A flat images/ + masks/ dataset with two clean pairs, for one hostile file to be added to."""
    rng = np.random.default_rng(0)
    for name in GOOD:
        save_array(root / "images" / f"{name}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        save_array(root / "masks" / f"{name}.png", rng.integers(0, 3, size, dtype=np.uint8))
    return root


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _noise(size: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)


def _mask(root: Path, name: str, size: tuple[int, int] = (40, 48)) -> None:
    save_array(root / "masks" / f"{name}.png", np.ones(size, dtype=np.uint8))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header then claims width x height pixels (CRC fixed so PIL believes it)."""
    data = bytearray(_png_bytes(np.zeros((1, 1), np.uint8)))
    struct.pack_into(">II", data, 16, width, height)  # IHDR payload starts at byte 16
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _tiff16_rgba(path: Path, array: np.ndarray) -> None:
    """A baseline little-endian TIFF of 16-bit RGBA samples, written by hand (PIL cannot write one)."""
    height, width, channels = array.shape
    pixels = array.astype("<u2").tobytes()
    bits_at, data_at = 8, 8 + 2 * channels
    ifd_at = data_at + len(pixels)
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, channels, bits_at), (259, 3, 1, 1),
            (262, 3, 1, 2), (273, 4, 1, data_at), (277, 3, 1, channels), (278, 3, 1, height),
            (279, 4, 1, len(pixels)), (284, 3, 1, 1), (338, 3, 1, 2)]
    out = b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack(f"<{channels}H", *[16] * channels) + pixels
    out += struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        inline_short = kind == 3 and count == 1
        out += struct.pack("<HHIHH", tag, kind, count, value, 0) if inline_short else struct.pack(
            "<HHII", tag, kind, count, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out + struct.pack("<I", 0))


def _check(root: Path) -> CheckReport:
    """check_dataset, plus the promises every report keeps: JSON and printing never crash."""
    report = check_dataset(root, workers=1, progress=False)
    text = json.dumps(report.to_dict())
    json.loads(text)
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=140))
    printed = buffer.getvalue()
    assert "Result:" in printed
    printed.encode("utf-8")  # no lone surrogates: a UTF-8 terminal can show it
    return report


def _problem_names(report: CheckReport, code: str) -> list[str]:
    return [Path(display_path(p)).name for problem in report.by_code(code) for p in problem.paths]


def _assert_reported(report: CheckReport, code: str, name: str) -> None:
    names = _problem_names(report, code)
    assert name in names, f"{code} should name {name}; problems: {[p.message for p in report.problems]}"
    assert any(name in p.message for p in report.by_code(code))


# --- broken files ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["images", "masks"])
def test_zero_byte_file(tmp_path, role):
    root = _dataset(tmp_path)
    save_array(root / "images" / "zero.png", _noise())
    _mask(root, "zero")
    (root / role / "zero.png").write_bytes(b"")
    report = _check(root)
    _assert_reported(report, "empty", "zero.png")
    assert report.exit_code(strict=False) == 2
    assert report.masks_counted["all"] == (2 if role == "masks" else 3)


@pytest.mark.parametrize(("name", "encode"), [("cut.png", _png_bytes), ("cut.jpg", _jpeg_bytes)])
def test_truncated_image(tmp_path, name, encode):
    root = _dataset(tmp_path)
    data = encode(_noise())
    (root / "images" / name).write_bytes(data[: len(data) // 2])
    _mask(root, "cut")
    report = _check(root)
    _assert_reported(report, "truncated", name)
    assert "truncated" in report.by_code("truncated")[0].message


def test_truncated_mask(tmp_path):
    root = _dataset(tmp_path)
    save_array(root / "images" / "cut.png", _noise())
    data = _png_bytes(np.ones((40, 48), np.uint8) * 2)
    (root / "masks" / "cut.png").write_bytes(data[: len(data) // 2])
    report = _check(root)
    _assert_reported(report, "truncated", "cut.png")
    assert report.masks_counted["all"] == 2  # the broken mask adds no pixels to the class counts


def test_text_file_named_png(tmp_path):
    root = _dataset(tmp_path)
    (root / "images" / "notes.png").write_text("this is not an image\n")
    _mask(root, "notes")
    report = _check(root)
    _assert_reported(report, "not_an_image", "notes.png")


def test_decompression_bomb_is_refused_fast(tmp_path):
    root = _dataset(tmp_path)
    (root / "images" / "bomb.png").write_bytes(_bomb_png(30000, 30000))
    _mask(root, "bomb")
    report = _check(root)
    _assert_reported(report, "too_large", "bomb.png")
    assert "decompression bomb" in report.by_code("too_large")[0].message


def test_bomb_between_warning_and_error_limits_is_refused_too(tmp_path):
    # 10000 x 10000 is above PIL's warning limit (~89 Mpx) but below its error limit: PIL alone would decode it.
    root = _dataset(tmp_path)
    (root / "images" / "big.png").write_bytes(_bomb_png(10000, 10000))
    _mask(root, "big")
    report = _check(root)
    _assert_reported(report, "too_large", "big.png")


def test_one_pixel_image_is_a_tiny_warning(tmp_path):
    root = _dataset(tmp_path)
    save_array(root / "images" / "dot.png", np.full((1, 1, 3), 7, np.uint8))
    save_array(root / "masks" / "dot.png", np.ones((1, 1), np.uint8))
    report = _check(root)
    _assert_reported(report, "tiny_image", "dot.png")
    assert "1x1" in report.by_code("tiny_image")[0].message
    assert report.exit_code(strict=False) == 0 and report.exit_code(strict=True) == 1


def test_four_channel_16_bit_tiff(tmp_path):
    root = _dataset(tmp_path)
    array = np.random.default_rng(2).integers(0, 65535, (40, 48, 4), dtype=np.uint16)
    _tiff16_rgba(root / "images" / "deep.tif", array)
    _mask(root, "deep")
    report = _check(root)
    _assert_reported(report, "high_bit_depth", "deep.tif")
    _assert_reported(report, "alpha_channel", "deep.tif")
    assert report.image_modes.get("RGBA") == 1
    assert not report.errors  # readable: it is checked like any other image


def test_mask_with_a_different_size(tmp_path):
    root = _dataset(tmp_path)
    save_array(root / "images" / "odd.png", _noise((40, 48)))
    _mask(root, "odd", size=(20, 24))
    report = _check(root)
    _assert_reported(report, "size_mismatch", "odd.png")
    assert "24x20" in report.by_code("size_mismatch")[0].message


# --- links and names -------------------------------------------------------------------------


def test_folder_symlinked_into_itself(tmp_path):
    root = _dataset(tmp_path)
    os.symlink(root / "images", root / "images" / "loop")
    os.symlink(root, root / "rootloop")
    report = _check(root)
    assert report.splits == {"all": 2}
    assert not report.errors and report.files_checked == 4  # the links are neither followed nor reported


def test_two_symlinks_pointing_at_each_other(tmp_path):
    root = _dataset(tmp_path)
    os.symlink(root / "images" / "b.png", root / "images" / "a.png")
    os.symlink(root / "images" / "a.png", root / "images" / "b.png")
    report = _check(root)
    _assert_reported(report, "unreadable", "a.png")
    _assert_reported(report, "unreadable", "b.png")
    assert "loop" in report.by_code("unreadable")[0].message


def test_dangling_symlink_named_png(tmp_path):
    root = _dataset(tmp_path)
    os.symlink(tmp_path / "nowhere" / "gone.png", root / "masks" / "dangling.png")
    report = _check(root)
    _assert_reported(report, "unreadable", "dangling.png")
    assert "broken symbolic link" in report.by_code("unreadable")[0].message


def test_non_utf8_file_names(tmp_path):
    root = _dataset(tmp_path)
    paired, lonely = b"caf\xe9.png", b"na\xefve.png"
    for folder, name in ((b"images", paired), (b"masks", paired), (b"images", lonely)):
        array = _noise() if folder == b"images" else np.ones((40, 48), np.uint8)
        data = _png_bytes(array)
        with open(os.path.join(os.fsencode(root), folder, name), "wb") as handle:
            handle.write(data)
    report = _check(root)
    assert report.splits == {"all": 3}  # the paired one is read like any other
    _assert_reported(report, "unpaired", "na\\xefve.png")
    dumped = json.dumps(report.to_dict(), ensure_ascii=False)
    dumped.encode("utf-8")
    assert "na\\\\xefve.png" in dumped


def test_whole_corpus_at_once_with_workers(tmp_path):
    """Every hostile file together, through the worker pool: the good pairs are still counted."""
    root = _dataset(tmp_path)
    rng = np.random.default_rng(3)
    for index in range(30):  # enough files to use worker processes
        save_array(root / "images" / f"n{index:02d}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        _mask(root, f"n{index:02d}")
    (root / "images" / "zero.png").write_bytes(b"")
    (root / "images" / "cut.jpg").write_bytes(_jpeg_bytes(_noise())[:300])
    (root / "images" / "notes.png").write_text("hello")
    (root / "images" / "bomb.png").write_bytes(_bomb_png(30000, 30000))
    save_array(root / "images" / "dot.png", np.zeros((1, 1, 3), np.uint8))
    save_array(root / "masks" / "dot.png", np.zeros((1, 1), np.uint8))
    for name in ("zero", "cut", "notes", "bomb"):
        _mask(root, name)
    os.symlink(root / "images" / "gone.png", root / "images" / "dangling.png")
    with open(os.path.join(os.fsencode(root), b"images", b"caf\xe9.png"), "wb") as handle:
        handle.write(_png_bytes(_noise()))
    report = check_dataset(root, workers=2, progress=False)
    codes = {p.code for p in report.problems}
    assert {"empty", "truncated", "not_an_image", "too_large", "tiny_image", "unreadable", "unpaired"} <= codes
    assert report.masks_counted["all"] == 2 + 30 + 5  # every mask is fine; the broken images do not hide them
    assert sum(report.image_sizes.values()) == 2 + 30 + 1
    json.dumps(report.to_dict())
    print_report(report, Console(file=io.StringIO()))


def test_check_uses_the_same_limit(tmp_path, monkeypatch):
    from masksmith.data.check import check_dataset

    data = make_shapes_dataset(tmp_path / "data", count=3)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    assert not check_dataset(data, workers=1, progress=False).by_code("too_large")
    monkeypatch.setenv(ENV_VAR, "5000")
    report = check_dataset(data, workers=1, progress=False)
    assert sorted(Path(p).parent.name for problem in report.by_code("too_large") for p in problem.paths) == [
        "images", "masks"]
