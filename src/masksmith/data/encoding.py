"""How mask pixels map to classes (`MaskEncoding`), and the one rule for the ignore value.

Mask encodings (`MaskEncoding.kind`):
- "index":  pixel values are class indices (grayscale / palette PNG, 16-bit PNG or TIFF, .npy).
- "binary": two values, e.g. 0/255, 0/1, 0/65535 or ISBI's 0 = membrane / 255; `foreground` is class 1.
- "color":  RGB masks whose colors map to classes through a color table (`colors`, in class order).

The ignore value (`ignore_index`, default `DEFAULT_IGNORE_INDEX` = 255) is any 0..255 value that is not one of
the class indices 0..K-1: void = K (just above the classes), 200 or 255 all work. `ignore_index_problem` says
so in one place for every caller (labels, decoding, datasets, bundles). A class list that names the void as its
last class (CamVid's 'Unlabelled' = 11 of 12) is read without it first (`masksmith.data.classes.named_void`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from masksmith.data.palette import Color, color_text
from masksmith.errors import ConfigError

ENCODING_KINDS = ("index", "binary", "color")
DEFAULT_IGNORE_INDEX = 255  # the one default: VOC's void value, above any class count a uint8 mask can hold
MAX_PIXEL_VALUE = 65535  # the largest value a (16-bit) mask pixel holds
MAX_CLASSES = 255  # uint8 masks: 0..254 are classes at most, so some value is always left for ignore


def ignore_value_problem(ignore_index: Any) -> str | None:
    """Why `ignore_index` is no value a uint8 mask can hold (None when it is one), whatever the classes."""
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        return f"ignore_index must be an integer 0..255, got {ignore_index!r}"
    if not 0 <= ignore_index <= 255:
        return f"ignore_index must be between 0 and 255 (masks are uint8), got {ignore_index}"
    return None


def ignore_index_problem(ignore_index: Any, num_classes: int, class_names: Sequence[str] | None = None) -> str | None:
    """Why `ignore_index` cannot mark ignored pixels for `num_classes` classes (None when it can).

    It must be an integer 0..255 (masks are uint8) and not one of the class indices 0..K-1 (it would hide that class).
    """
    problem = ignore_value_problem(ignore_index)
    if problem is not None:
        return problem
    if ignore_index < num_classes:
        name = ""
        if class_names is not None and ignore_index < len(class_names):
            name = f" {class_names[ignore_index]!r}"
        return (f"ignore_index {ignore_index} is a class index (class {ignore_index}{name} of the {num_classes} "
                f"classes), so that class's pixels would be ignored; use a value that is no class "
                f"({num_classes}..255, e.g. 255)")
    return None


def check_class_range(num_classes: int, ignore_index: int, class_names: Sequence[str] | None = None) -> None:
    """ConfigError unless 1..255 classes and an ignore value that is no class fit a uint8 mask."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"num_classes must be between 1 and {MAX_CLASSES}, got {num_classes}")
    problem = ignore_index_problem(ignore_index, num_classes, class_names)
    if problem is not None:
        raise ConfigError(problem)


def color_tuple(rgb: Sequence[int] | np.ndarray) -> Color:
    """(r, g, b) as plain ints."""
    r, g, b = (int(v) for v in rgb)
    return (r, g, b)


def _optional_value(value: Any, what: str) -> int | None:
    """None, or a binary mask value as a non-negative int (JSON may give 255.0); else a ConfigError."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"binary mask {what} value must be a non-negative integer, got {value!r}")
    return int(value)


def _implied_background(foreground: int | None) -> int:
    """The background value of a binary mask when none is recorded: 0, or 255 when 0 is the foreground."""
    return 255 if foreground == 0 else 0


def as_color(value: Any, what: str) -> Color:
    """A validated (r, g, b) tuple of ints 0..255, or a ConfigError."""
    try:
        color = tuple(int(c) for c in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be three integers r, g, b, got {value!r}") from None
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise ConfigError(f"{what} must be three integers 0..255, got {value!r}")
    return color  # type: ignore[return-value]




@dataclass(frozen=True)
class MaskEncoding:
    """How mask pixels map to classes: class indices, binary values, or an RGB color table."""

    kind: Literal["index", "binary", "color"]
    foreground: int | None = None  # binary: the value meaning class 1; None = any non-zero value
    background: int | None = None  # binary: the class-0 value written back; None = 0 (255 if foreground is 0)
    colors: tuple[Color, ...] | None = None  # color: one RGB color per class, in class order
    names: tuple[str, ...] | None = None  # color: class names from a palette file, same order as colors
    ignore_color: Color | None = None  # color: the RGB color read as ignore_index (e.g. white, VOC's void)
    lossy: bool = False  # masks were saved lossily (JPEG): snap every pixel to the nearest class

    def __post_init__(self) -> None:
        if self.kind not in ENCODING_KINDS:
            raise ConfigError(f"mask encoding kind must be 'index', 'binary' or 'color', got {self.kind!r}")
        set_ = object.__setattr__  # frozen: normalise once here so equal encodings compare equal
        if not isinstance(self.lossy, (bool, np.bool_)):
            raise ConfigError(f"mask encoding lossy must be true or false, got {self.lossy!r}")
        set_(self, "lossy", bool(self.lossy))
        if self.kind != "binary" and (self.foreground is not None or self.background is not None):
            raise ConfigError(
                f"mask encoding {self.kind!r} takes no foreground/background value (those are for binary masks)"
            )
        if self.kind != "color" and (self.colors, self.names, self.ignore_color) != (None, None, None):
            raise ConfigError(
                f"mask encoding {self.kind!r} takes no colors, names or ignore color (those are for color masks)"
            )
        if self.kind == "binary":
            foreground = _optional_value(self.foreground, "foreground")
            background = _optional_value(self.background, "background")
            background = _implied_background(foreground) if background is None else background
            if foreground == background:
                raise ConfigError(f"binary mask foreground and background are both {foreground}")
            set_(self, "foreground", foreground)
            set_(self, "background", background)
        if self.kind == "color":
            if not self.colors or not isinstance(self.colors, (list, tuple)):
                raise ConfigError(f"mask encoding 'color' needs a non-empty list of colors, got {self.colors!r}")
            colors = tuple(as_color(c, f"color {i}") for i, c in enumerate(self.colors))
            if len(colors) > 255:
                raise ConfigError(
                    f"a color table holds at most 255 classes (uint8 masks, 255 = ignore), got {len(colors)}"
                )
            if len(set(colors)) != len(colors):
                dupes = sorted({c for c in colors if colors.count(c) > 1})
                raise ConfigError(
                    f"color table lists {color_text(dupes[0])} more than once; each class needs its own color"
                )
            set_(self, "colors", colors)
            if self.names is not None:
                if not isinstance(self.names, (list, tuple)):
                    raise ConfigError(f"color table names must be a list of strings, got {self.names!r}")
                names = tuple(str(n) for n in self.names)
                if len(names) != len(colors):
                    raise ConfigError(f"color table has {len(colors)} colors but {len(names)} names")
                if len(set(names)) != len(names):
                    raise ConfigError(f"color table names are not unique: {list(names)}")
                set_(self, "names", names)
            if self.ignore_color is not None:
                ignore = as_color(self.ignore_color, "ignore color")
                if ignore in colors:
                    raise ConfigError(f"ignore color {color_text(ignore)} is also class {colors.index(ignore)}")
                set_(self, "ignore_color", ignore)

    @property
    def num_classes(self) -> int | None:
        """Classes the encoding itself fixes (2 for binary, the table size for color); None for index masks."""
        if self.kind == "binary":
            return 2
        if self.kind == "color":
            assert self.colors is not None
            return len(self.colors)
        return None

    def to_dict(self) -> dict:
        """A JSON-ready dict, the form stored in configs and bundles; defaults are left out (old readers load it)."""
        d: dict[str, Any] = {"kind": self.kind, "foreground": self.foreground}
        if self.kind == "binary" and self.background != _implied_background(self.foreground):
            d["background"] = self.background
        if self.colors is not None:
            d["colors"] = [list(c) for c in self.colors]
        if self.names is not None:
            d["names"] = list(self.names)
        if self.ignore_color is not None:
            d["ignore_color"] = list(self.ignore_color)
        if self.lossy:
            d["lossy"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MaskEncoding:
        """Rebuild from `to_dict` output (older bundles' {"kind", "foreground"} dicts included)."""
        allowed = {"kind", "foreground", "background", "colors", "names", "ignore_color", "lossy"}
        if not isinstance(d, Mapping) or "kind" not in d or set(d) - allowed:
            keys = sorted(d) if isinstance(d, Mapping) else d
            optional = ", ".join(sorted(allowed - {"kind"}))
            raise ConfigError(f"mask encoding needs 'kind' (and optional {optional}), got keys {keys}")

        # __post_init__ validates and normalises every field (lists from JSON become tuples).
        return cls(kind=d["kind"], foreground=d.get("foreground"), background=d.get("background"),
                   colors=d.get("colors"), names=d.get("names"), ignore_color=d.get("ignore_color"),
                   lossy=d.get("lossy", False))


def describe_encoding(encoding: MaskEncoding) -> str:
    """One line for logs, e.g. 'RGB color masks, 6 colors' or 'binary masks, foreground value 0 (background 255)'."""
    if encoding.kind == "color":
        assert encoding.colors is not None
        text = f"RGB color masks, {len(encoding.colors)} colors"
        if encoding.ignore_color is not None:
            text += f", ignore color {color_text(encoding.ignore_color)}"
    elif encoding.kind == "binary":
        if encoding.foreground is None:
            text = "binary masks, foreground = any non-zero value"
        else:
            text = f"binary masks, foreground value {encoding.foreground} (background {encoding.background})"
    else:
        text = "index masks"
    if encoding.lossy:
        text += ", lossy (JPEG): pixels snapped to the nearest class"
    return text



def color_table_text(encoding: MaskEncoding, counts: Sequence[int] | Sequence[tuple[Color, int]] | None = None,
                     *, ignored: int = 0, names: Sequence[str] | None = None) -> str:
    """A printed table of class index, value or color, name and pixel share.

    counts: pixels per class (MaskSurvey.counts) or discover_colors' (color, pixels) pairs; ignored: ignored
    pixels; names: class names (default: the palette file's, else background/foreground or class_<i>).
    """
    if encoding.kind == "color":
        assert encoding.colors is not None
        values = [f"{color_text(c):<15} #{c[0]:02x}{c[1]:02x}{c[2]:02x}" for c in encoding.colors]
        default = list(encoding.names) if encoding.names else [f"class_{i}" for i in range(len(values))]
    elif encoding.kind == "binary":
        fg = "non-zero" if encoding.foreground is None else str(encoding.foreground)
        values = [f"value {encoding.background}", f"value {fg}"]
        default = ["background", "foreground"]
    else:
        size = len(counts) if counts is not None else len(names or [])
        values = [f"value {i}" for i in range(size)]
        default = [f"class_{i}" for i in range(size)]
    if names is not None and len(names) != len(values):
        raise ConfigError(f"{len(names)} class names for a table of {len(values)} classes")
    names = list(names) if names is not None else default
    per_class: list[int | None] = [None] * len(values)
    if counts is not None:
        items = list(counts)
        if items and isinstance(items[0], (tuple, list)):
            by_color = {tuple(int(v) for v in c): int(n) for c, n in items}  # type: ignore[misc]
            per_class = [by_color.get(tuple(c), 0) for c in (encoding.colors or [])]
        else:
            per_class = [int(n) for n in items] + [None] * (len(values) - len(items))  # type: ignore[arg-type]
    total = sum(n for n in per_class if n) + ignored
    width = max([len(n) for n in names] + [4])
    lines = [f"{'class':>5}  {'value' if encoding.kind != 'color' else 'color':<23}  {'name':<{width}}  share"]
    for index, (value, name, n) in enumerate(zip(values, names, per_class)):
        share = "" if n is None or not total else f"{100.0 * n / total:5.1f}%"
        lines.append(f"{index:>5}  {value:<23}  {name:<{width}}  {share}".rstrip())
    if ignored or encoding.ignore_color is not None:
        value = f"{color_text(encoding.ignore_color)}" if encoding.ignore_color is not None else "ignore"
        share = f"{100.0 * ignored / total:5.1f}%" if total else ""
        lines.append(f"{'-':>5}  {value:<23}  {'(ignore)':<{width}}  {share}".rstrip())
    return "\n".join(lines)
