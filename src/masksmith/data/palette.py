"""Class color tables: read palette files (CVAT labelmap.txt, CSV, whitespace) and pack RGB colors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from masksmith.data.classes import class_name_problem
from masksmith.errors import DataError

Color = tuple[int, int, int]

_INT = re.compile(r"^[+-]?\d+$")


def pack_colors(rgb: np.ndarray) -> np.ndarray:
    """Pack an ...x3 uint8 RGB array into ... uint32 keys (0xRRGGBB), so colors compare as single numbers."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2].astype(np.uint32)


def unpack_colors(keys: np.ndarray) -> np.ndarray:
    """Inverse of `pack_colors`: uint32 keys -> ...x3 uint8 RGB."""
    keys = np.asarray(keys, dtype=np.uint32)
    return np.stack([(keys >> 16) & 0xFF, (keys >> 8) & 0xFF, keys & 0xFF], axis=-1).astype(np.uint8)


def color_text(color: Color | np.ndarray) -> str:
    """'(r, g, b)' for messages and tables."""
    r, g, b = (int(c) for c in color)
    return f"({r}, {g}, {b})"


def _parse_color(fields: list[str], where: str) -> Color:
    """Three 0..255 integers, or a DataError naming the line."""
    if len(fields) != 3 or not all(_INT.match(f.strip()) for f in fields):
        raise DataError(f"{where}: expected a color as three integers r,g,b, got {','.join(fields)!r}")
    values = tuple(int(f) for f in fields)
    if not all(0 <= v <= 255 for v in values):
        raise DataError(f"{where}: color values must be 0..255, got {values}")
    return values  # type: ignore[return-value]


def _parse_line(line: str, where: str) -> tuple[str | None, Color] | None:
    """(name or None, color) from one palette line; None for a header line such as 'name,r,g,b'."""
    if ":" in line:
        # CVAT labelmap.txt: label:color_rgb:parts:actions; only the first two fields matter here.
        name, _, rest = line.partition(":")
        color_field = rest.split(":", 1)[0].strip()
        if not color_field:
            raise DataError(f"{where}: label {name.strip()!r} has no color (expected label:r,g,b::)")
        return name.strip() or None, _parse_color(color_field.split(","), where)
    comma = "," in line
    fields = [f for f in (part.strip() for part in (line.split(",") if comma else line.split())) if f]
    sep = "," if comma else " "
    last3 = len(fields) >= 3 and all(_INT.match(f) for f in fields[-3:])
    first3 = len(fields) >= 3 and all(_INT.match(f) for f in fields[:3])
    if len(fields) == 3 and last3:
        return None, _parse_color(fields, where)  # a bare r,g,b
    if last3 and first3:
        # All numbers (a numeric name): the separator decides, CSV is name,r,g,b and whitespace is r g b name.
        if comma:
            return sep.join(fields[:-3]), _parse_color(fields[-3:], where)
        return sep.join(fields[3:]), _parse_color(fields[:3], where)
    if last3:
        return sep.join(fields[:-3]), _parse_color(fields[-3:], where)  # name may hold separators
    if first3:
        return sep.join(fields[3:]), _parse_color(fields[:3], where)
    if not any(_INT.match(f) for f in fields):
        return None  # a header row: only words
    raise DataError(f"{where}: cannot read {line.strip()!r}; expected 'name,r,g,b', 'r g b name' or 'name:r,g,b::'")


def read_palette_file(path: str | Path) -> tuple[list[str], list[Color]]:
    """Read (class names, class colors) in file order from a CVAT labelmap.txt or a name,r,g,b / r g b name file.

    Blank lines and '#' comments are skipped, as is one leading header row of words (e.g. 'name,r,g,b').
    A line without a name gets 'class_<index>'.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: files saved by spreadsheet tools start with a BOM
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read palette file: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot read palette file: {reason}") from None

    names: list[str] = []
    colors: list[Color] = []
    name_line: dict[str, int] = {}
    color_line: dict[Color, tuple[int, str]] = {}
    header_allowed = True
    for number, raw in enumerate(text.split("\n"), start=1):  # not splitlines: it also splits at \x1c, \u2028
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}: line {number}"
        parsed = _parse_line(line, where)
        if parsed is None:
            if not header_allowed:
                raise DataError(f"{where}: cannot read {line!r}; expected 'name,r,g,b', 'r g b name' or 'name:r,g,b::'")
            header_allowed = False
            continue
        header_allowed = False
        name, color = parsed
        name = name if name is not None else f"class_{len(colors)}"
        if (problem := class_name_problem(name)) is not None:
            raise DataError(f"{where}: {problem}")
        if color in color_line:
            first_line, first_name = color_line[color]
            raise DataError(
                f"{where}: color {color_text(color)} of {name!r} is already used by {first_name!r} on line "
                f"{first_line}; each class needs its own color"
            )
        if name in name_line:
            raise DataError(f"{where}: class name {name!r} is already used on line {name_line[name]}")
        color_line[color] = (number, name)
        name_line[name] = number
        names.append(name)
        colors.append(color)
    if not colors:
        raise DataError(f"{path}: palette file lists no classes (expected lines like 'background,0,0,0')")
    if len(colors) > 255:
        raise DataError(f"{path}: palette file lists {len(colors)} classes; a mask holds at most 255 classes")
    return names, colors
