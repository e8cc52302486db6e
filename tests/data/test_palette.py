"""Palette files (--palette): the forms they take, names, a BOM, and bad lines named by file and line."""

from __future__ import annotations

import re

import numpy as np
import pytest

from masksmith.data.detect import detect_encoding
from masksmith.data.masks import read_mask
from masksmith.data.palette import read_palette_file
from masksmith.errors import DataError
from tests.conftest import save_array
from tests.data.mask_files import RED, WHITE


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
    path = save_array(tmp_path / "m.png", rgb)
    encoding, num_classes = detect_encoding([path], palette=palette, ignore_color=WHITE)
    assert encoding.names == ("background", "car") and num_classes == 2
    assert read_mask(path, encoding, 2)[:2].tolist() == [[255] * 4, [1] * 4]
