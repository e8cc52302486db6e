"""Read images and decode masks into 2-D class-index arrays, and encode class indices back in kind.

Mask encodings (`MaskEncoding.kind`):
- "index":  pixel values are class indices (grayscale / palette PNG, 16-bit PNG or TIFF, .npy); 255 = ignore.
- "binary": two values, e.g. 0/255, 0/1, 0/65535 or ISBI's 0 = membrane / 255; `foreground` is class 1.
- "color":  RGB masks whose colors map to classes through a color table (`colors`, in class order).

Conventions:
- Palette PNGs are read by their indices (VOC), GIFs by their palette colors: GIF writers reorder the palette
  freely, so a GIF's indices carry no meaning.
- Colors found without a palette file are numbered by their packed value 0xRRGGBB, ascending: black (0, 0, 0)
  is class 0 when present, and the numbering depends only on which colors occur, not on how often.
- JPEG masks (and masks detected as lossily saved) have every pixel snapped to the nearest class
  value/color, with a `LossyMaskWarning` that names the file and counts the snapped pixels.
- .npy masks are read with `allow_pickle=False`, always: a pickled file is refused, never unpickled.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from masksmith.data.limits import open_image
from masksmith.data.palette import Color, color_text, pack_colors, read_palette_file, unpack_colors
from masksmith.errors import ConfigError, DataError
from masksmith.fileio import atomic_path

# PIL modes whose pixels are one intensity value; everything else is treated as colour.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: the multi-picture JPEG some cameras write
NPY_SUFFIX = ".npy"
ENCODING_KINDS = ("index", "binary", "color")

# Lossy-mask heuristics. Class regions are flat (pixels close to their 4 neighbours) even after JPEG;
# compression artifacts are many rare values along edges, close to a class value/color.
_FLAT_TOLERANCE = 16  # per channel: JPEG noise inside a region stays below this; class edges jump higher
_LEVEL_BIN = {"gray": 1, "color": 16}  # flat pixels are counted per bin (colors: 16x16x16 cubes)
_LEVEL_MIN_PIXELS = 16  # flat pixels a bin needs to be a class in a lossy mask
_LEVEL_MIN_SHARE = 0.002  # ... and this share of all flat pixels
_LEVEL_OWN_SHARE = 0.05  # gray: a value this full is its own class even when close to a fuller one (0/1 masks)
_MERGE_RADIUS = {"gray": 32, "color": 32}  # closer levels are one class rendered twice by the codec
_NEAR = {"gray": 32, "color": 48}  # artifacts lie this close to a class value/color
_ARTIFACT_MIN_DISTINCT = 16  # fewer unexpected values than this are real labels, not compression noise
_ARTIFACT_NEAR_FRACTION = 0.9  # share of unexpected pixels that must lie near a class for "lossy"
_FAR = {"gray": 64, "color": 96}  # in a lossy mask, a big region this far from every class is an unknown class
_FAR_MIN_SHARE = 0.005


class LossyMaskWarning(UserWarning):
    """A mask saved lossily (JPEG) had pixels snapped to the nearest class value or color."""


class StrayMaskValuesWarning(UserWarning):
    """Binary masks hold values that are neither the foreground nor the background value."""


def _color_tuple(rgb: Sequence[int] | np.ndarray) -> Color:
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


def _as_color(value: Any, what: str) -> Color:
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
            colors = tuple(_as_color(c, f"color {i}") for i, c in enumerate(self.colors))
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
                ignore = _as_color(self.ignore_color, "ignore color")
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


# --- reading files ------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """An exception as one line of text."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _open(path: Path, what: str, *, single_frame: bool = False) -> Image.Image:
    """Open and fully decode a file, so truncation shows up here and not deep inside training."""
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: cannot read {what}: file is empty (0 bytes)")
        with open_image(path, what) as image:  # refuses a bomb before decoding
            frames = getattr(image, "n_frames", 1)
            if single_frame and frames > 1:
                # A mask is one label image; silently taking page 1 of a stack would train on the wrong labels.
                raise DataError(f"{path}: cannot read {what}: file holds {frames} pages/frames; a mask is one image")
            image.load()
            # Masks are stored upright like their images; honour a rotation tag on either.
            ImageOps.exif_transpose(image, in_place=True)
        return image
    except (DataError, ConfigError):  # ConfigError: a bad pixel-limit setting
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read {what}: file not found") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        raise DataError(f"{path}: cannot read {what}: {_reason(exc)}") from None


def _load_npy(path: Path, what: str) -> np.ndarray:
    """np.load with allow_pickle=False, always: a mask file must never be able to run code when read."""
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: cannot read {what}: file is empty (0 bytes)")
        loaded = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read {what}: file not found") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(
                f"{path}: cannot read {what}: the .npy holds pickled Python objects, which masksmith never loads "
                "(unpickling can run code); save a plain integer array"
            ) from None
        raise DataError(f"{path}: cannot read {what}: {_reason(exc)}") from None
    except Exception as exc:  # truncated files raise EOFError, OSError, ...
        raise DataError(f"{path}: cannot read {what}: {_reason(exc)}") from None
    if not isinstance(loaded, np.ndarray):
        getattr(loaded, "close", lambda: None)()
        raise DataError(f"{path}: cannot read {what}: an .npz archive, not a single .npy array")
    return loaded


def _wide_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit / float intensities to 0..255 by the image's maximum."""
    array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    array = np.clip(array, 0, None)
    peak = array.max()
    if peak > 0:
        array = array * (255.0 / peak)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _to_gray(image: Image.Image) -> np.ndarray:
    """HxW uint8 intensities from any PIL mode."""
    if image.mode in _WIDE_MODES:
        return _wide_to_uint8(np.asarray(image))
    if image.mode in ("LA", "La"):
        return np.asarray(image)[..., 0].copy()
    if image.mode != "L":
        image = image.convert("RGB").convert("L")
    return np.asarray(image)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 from any PIL mode; alpha is dropped."""
    if image.mode in GRAYSCALE_MODES:
        gray = _to_gray(image)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")  # P, RGBA, CMYK, YCbCr, ...: PIL drops alpha and converts colour spaces
    return np.asarray(image)


def _npy_image(path: Path) -> Image.Image:
    """An .npy array (HxW, HxWx1, HxWx3 or HxWx4; any numeric dtype) as a PIL image."""
    array = _load_npy(path, "image")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise DataError(f"{path}: cannot read image: array shape {array.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind not in "uif":
        raise DataError(f"{path}: cannot read image: {array.dtype} array; expected numbers")
    elif array.dtype != np.uint8:
        array = _wide_to_uint8(array)  # like a 16-bit PNG: scaled by the image's maximum
    if array.ndim == 3:
        array = array[:, :, :3]  # alpha dropped; a 2-D array keeps every column (a[..., :3] would cut it to 3)
    return Image.fromarray(np.ascontiguousarray(array))


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image (or .npy array) as HxWxC uint8 (C = channels, or 1 for grayscale files and 3 otherwise)."""
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels}")
    image = _npy_image(path) if path.suffix.lower() == NPY_SUFFIX else _open(path, "image")
    return image_to_array(image, channels)


def image_to_array(image: Image.Image, channels: int | None = None) -> np.ndarray:
    """A decoded PIL image as read_image returns it: HxWxC uint8 (C = channels, or 1 for grayscale, else 3)."""
    # Shared with `masksmith serve`, whose uploads must become the very arrays `predict` reads from files.
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels}")
    if channels is None:
        channels = 1 if image.mode in GRAYSCALE_MODES else 3
    array = _to_gray(image)[:, :, None] if channels == 1 else _to_rgb(image)
    return np.ascontiguousarray(array, dtype=np.uint8)


def image_channels(path: str | Path) -> int:
    """1 if the file is stored as grayscale, else 3; reads only the header."""
    path = Path(path)
    if path.suffix.lower() == NPY_SUFFIX:
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except FileNotFoundError:
            raise DataError(f"{path}: cannot read image: file not found") from None
        except Exception as exc:
            raise DataError(f"{path}: cannot read image: {_reason(exc)}") from None
        return 3 if len(shape) == 3 and shape[2] in (3, 4) else 1
    try:
        with Image.open(path) as image:
            mode = image.mode
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image: file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read image: {_reason(exc)}") from None
    return 1 if mode in GRAYSCALE_MODES else 3


@dataclass
class _RawMask:
    """A mask file's pixels before decoding."""

    values: np.ndarray  # HxW values (palette images: indices), or HxWx3 uint8 for true-color masks
    palette: np.ndarray | None  # 256x3 uint8 for palette images, turning indices into colors
    jpeg: bool  # stored in a lossy format

    def rgb(self, path: Path) -> np.ndarray:
        """The pixels as HxWx3 uint8 colors (palette indices through the palette, gray values repeated)."""
        if self.values.ndim == 3:
            return self.values
        if self.palette is not None:
            return self.palette[self.values]
        return _gray_to_rgb(self.values, f"{path}: ")


def _gray_to_rgb(values: np.ndarray, where: str) -> np.ndarray:
    """Gray values v as colors (v, v, v); values beyond 8 bits cannot be colors."""
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(f"{where}mask values {int(values.min())}..{int(values.max())} are not 8-bit colors")
    return np.repeat(values.astype(np.uint8)[:, :, None], 3, axis=2)


def _gray_or_color(rgb: np.ndarray) -> np.ndarray:
    """HxW when every pixel is gray (R = G = B: a grayscale mask stored as RGB), else the HxWx3 colors."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy()
    return np.ascontiguousarray(rgb)


def _palette_table(image: Image.Image) -> np.ndarray:
    """The 256x3 uint8 palette of a P-mode image (missing entries black)."""
    table = np.zeros((256, 3), np.uint8)
    flat = image.getpalette("RGB") or []
    entries = np.asarray(flat[: 256 * 3], np.uint8).reshape(-1, 3)
    table[: len(entries)] = entries
    return table


def _npy_mask(path: Path) -> np.ndarray:
    """A 2-D integer (or bool) .npy mask."""
    array = _load_npy(path, "mask")
    if array.ndim != 2:
        raise DataError(f"{path}: mask array must be 2-D (height x width), got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)  # bool masks are binary 0/1
    if array.dtype.kind not in "ui":
        raise DataError(
            f"{path}: mask array has dtype {array.dtype}; save class indices as integers (or bool for binary masks)"
        )
    return array


def _load_mask(path: Path) -> _RawMask:
    """Read a mask file (any image format PIL reads, or .npy) into raw pixels."""
    if path.suffix.lower() == NPY_SUFFIX:
        return _RawMask(_npy_mask(path), None, False)
    image = _open(path, "mask", single_frame=True)
    jpeg = image.format in _LOSSY_FORMATS
    mode = image.mode
    if mode == "1":
        return _RawMask(np.asarray(image).astype(np.uint8), None, jpeg)
    if mode in ("P", "PA"):
        indices = np.asarray(image)
        indices = (indices[..., 0] if indices.ndim == 3 else indices).copy()
        table = _palette_table(image)
        if image.format == "GIF":
            # GIF stores only palette indices and writers reorder the palette at will: the colors are the data.
            return _RawMask(_gray_or_color(table[indices]), None, jpeg)
        return _RawMask(indices, table, jpeg)
    if mode in ("L", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        return _RawMask(np.asarray(image).copy(), None, jpeg)
    if mode in ("LA", "La"):
        return _RawMask(np.asarray(image)[..., 0].copy(), None, jpeg)
    if mode == "F":
        values = np.asarray(image)
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise DataError(f"{path}: mask has non-integer (float) values; save class indices as integers")
        return _RawMask(values.astype(np.int32), None, jpeg)
    if mode in ("RGB", "RGBA", "RGBX"):
        return _RawMask(_gray_or_color(np.asarray(image)[..., :3]), None, jpeg)
    raise DataError(f"{path}: mask has unsupported image mode {mode}; save it as a grayscale, palette or RGB PNG")


def read_mask_values(path: str | Path, *, rgb: bool = False) -> np.ndarray:
    """A mask's raw pixels: HxW values (palette PNGs: indices), HxWx3 for RGB color masks; rgb=True: always colors."""
    path = Path(path)
    raw = _load_mask(path)
    return raw.rgb(path) if rgb else raw.values


# --- decoding -------------------------------------------------------------------------------------------


def _check_classes(num_classes: int, ignore_index: int) -> None:
    """Class indices and the ignore value must fit a uint8 mask without colliding."""
    if not 1 <= num_classes <= 255:
        raise ConfigError(f"num_classes must be between 1 and 255, got {num_classes}")
    if not 0 <= ignore_index <= 255 or ignore_index < num_classes:
        raise ConfigError(
            f"ignore_index must be between num_classes ({num_classes}) and 255 so it cannot be a class, "
            f"got {ignore_index}"
        )


def _warn_snapped(where: str, reason: str, snapped: int, total: int, what: str) -> None:
    """Say how many pixels of a lossy mask were moved to the nearest class."""
    if snapped:
        share = 100.0 * snapped / max(total, 1)
        warnings.warn(
            f"{where}{reason}, {snapped} pixels ({share:.1f}%) snapped to the nearest class {what}",
            LossyMaskWarning,
            stacklevel=5,  # the caller of read_mask / decode_mask
        )


def _nearest(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `points` the index of, and Euclidean distance to, the nearest row of `centers`."""
    nearest = np.zeros(len(points), np.int64)
    distance = np.zeros(len(points), np.float64)
    centers = centers.astype(np.float64)
    step = max(1, 2**20 // max(len(centers), 1))  # a JPEG holds ~1e5 distinct colors: bound the NxK matrix
    for start in range(0, len(points), step):
        chunk = points[start : start + step].astype(np.float64)
        squared = ((chunk[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        best = squared.argmin(axis=1)
        nearest[start : start + step] = best
        distance[start : start + step] = np.sqrt(squared[np.arange(len(chunk)), best])
    return nearest, distance


def _looks_lossy(unknown_counts: np.ndarray, distance: np.ndarray, space: str) -> bool:
    """Many distinct unexpected values, nearly all close to a class: compression artifacts, not new labels."""
    if len(unknown_counts) < _ARTIFACT_MIN_DISTINCT:
        return False
    near = unknown_counts[distance <= _NEAR[space]].sum()
    return near >= _ARTIFACT_NEAR_FRACTION * unknown_counts.sum()


def _refuse_far_regions(where: str, points: np.ndarray, counts: np.ndarray, distance: np.ndarray,
                        total: int, space: str) -> None:
    """Snapping must not hide a real unlabelled class: one value far from every class covering a visible area."""
    far = (distance > _FAR[space]) & (counts >= max(_FAR_MIN_SHARE * total, _LEVEL_MIN_PIXELS))
    if far.any():
        texts = [color_text(p) if space == "color" else str(int(p[0])) for p in points[far][:5]]
        shown = ", ".join(f"{text} × {int(c)} px" for text, c in zip(texts, counts[far][:5]))
        word = "color" if space == "color" else "value"
        raise DataError(f"{where}lossy mask has large areas far from every class {word}: {shown}")


@dataclass(frozen=True)
class _ColorLookup:
    """A color table ready for lookups: class colors (+ the ignore color) and their classes, sorted by key."""

    colors: np.ndarray  # Kx3 uint8, class order, the ignore color last
    classes: np.ndarray  # K uint8: class index per color (ignore_index for the ignore color)
    sorted_keys: np.ndarray
    sorted_classes: np.ndarray

    @staticmethod
    def of(encoding: MaskEncoding, ignore_index: int) -> _ColorLookup:
        """The lookup for a color encoding."""
        assert encoding.colors is not None
        colors = np.asarray(encoding.colors, np.uint8).reshape(-1, 3)
        classes = np.arange(len(colors), dtype=np.uint8)
        if encoding.ignore_color is not None:
            colors = np.vstack([colors, np.asarray(encoding.ignore_color, np.uint8)])
            classes = np.append(classes, np.uint8(ignore_index))
        keys = pack_colors(colors)
        order = np.argsort(keys)
        return _ColorLookup(colors, classes, keys[order], classes[order])

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class per packed key, whether the key is in the table), by binary search."""
        pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.sorted_keys) - 1)
        return self.sorted_classes[pos], self.sorted_keys[pos] == keys


def _classify_colors(
    keys: np.ndarray, counts: np.ndarray, lookup: _ColorLookup, where: str, lossy_reason: str | None,
) -> tuple[np.ndarray, int, str | None]:
    """Class index per distinct packed color; returns (classes, snapped pixels, reason the mask counts as lossy)."""
    classes, hit = lookup.find(keys)
    if hit.all():
        return classes, 0, lossy_reason
    miss_colors = unpack_colors(keys[~hit])
    miss_counts = counts[~hit]
    nearest, distance = _nearest(miss_colors, lookup.colors)
    if lossy_reason is None and _looks_lossy(miss_counts, distance, "color"):
        lossy_reason = "mask has compression artifacts (many colors near the class colors)"
    if lossy_reason is None:
        top = np.argsort(-miss_counts, kind="stable")[:5]
        shown = ", ".join(f"{color_text(miss_colors[i])} × {int(miss_counts[i])} px" for i in top)
        more = f" (and {len(miss_counts) - 5} more)" if len(miss_counts) > 5 else ""
        raise DataError(
            f"{where}{len(miss_counts)} color(s) not in the color table of {len(lookup.classes)} colors: "
            f"{shown}{more}; add them to the palette file, or set the ignore color"
        )
    _refuse_far_regions(where, miss_colors, miss_counts, distance, int(counts.sum()), "color")
    classes = classes.copy()
    classes[~hit] = lookup.classes[nearest]
    return classes, int(miss_counts.sum()), lossy_reason


def _decode_color(rgb: np.ndarray, encoding: MaskEncoding, ignore_index: int, where: str,
                  lossy_reason: str | None) -> np.ndarray:
    """HxWx3 colors -> HxW class indices through the encoding's color table."""
    packed = pack_colors(rgb)
    lookup = _ColorLookup.of(encoding, ignore_index)
    # Exact lookups by binary search (no sort of the whole image); only the misses go through np.unique.
    out, hit = lookup.find(packed)
    if hit.all():
        return out
    miss_keys, inverse, miss_counts = np.unique(packed[~hit], return_inverse=True, return_counts=True)
    miss_classes, snapped, reason = _classify_colors(miss_keys, miss_counts, lookup, where, lossy_reason)
    out[~hit] = miss_classes[inverse]
    assert reason is not None
    _warn_snapped(where, reason, snapped, packed.size, "color")
    return out


def _binary_classes(values: np.ndarray, encoding: MaskEncoding, lossy: bool) -> np.ndarray:
    """Class 0/1 per value: the foreground value (any non-zero if unknown); lossy: the nearer of the two values."""
    if lossy:  # a threshold at the midpoint; an unknown foreground is taken as 255
        foreground = 255 if encoding.foreground is None else encoding.foreground
        assert encoding.background is not None
        wide = values.astype(np.int64)
        return (np.abs(wide - foreground) < np.abs(wide - encoding.background)).astype(np.uint8)
    if encoding.foreground is None:
        return (values > 0).astype(np.uint8)
    return (values == encoding.foreground).astype(np.uint8)


def binary_strays(values: np.ndarray, counts: np.ndarray, encoding: MaskEncoding) -> tuple[int, list[int]]:
    """(pixels, distinct values) of a clean binary mask's histogram that are neither foreground nor background.

    Decoding counts them as background; with foreground None (any non-zero value) or a lossy
    encoding (snapped to the nearer value, with its own warning) there are none.
    """
    if encoding.kind != "binary" or encoding.foreground is None or encoding.lossy:
        return 0, []
    stray = (values != encoding.foreground) & (values != encoding.background)
    return int(np.asarray(counts)[stray].sum()), [int(v) for v in np.asarray(values)[stray]]


def _warn_strays(files: list[_FileSurvey], encoding: MaskEncoding, sample_dir: Path) -> None:
    """One warning with the stray pixel and file counts of the sampled binary masks (check counts every mask)."""
    found = [(f.path, *binary_strays(f.gray.keys, f.gray.counts, encoding)) for f in files if f.gray is not None]
    found = [item for item in found if item[1]]
    if not found:
        return
    pixels = sum(item[1] for item in found)
    values = sorted({v for item in found for v in item[2]})
    shown = ", ".join(str(v) for v in values[:10]) + (", …" if len(values) > 10 else "")
    warnings.warn(
        f"{sample_dir}: {pixels} pixels in {len(found)} of the {len(files)} masks sampled have values ({shown}) that "
        f"are neither the foreground {encoding.foreground} nor the background {encoding.background}; they count as "
        f"background (first: {found[0][0].name}; check the masks or the foreground value)",
        StrayMaskValuesWarning, stacklevel=4)


def _snap_binary(values: np.ndarray, encoding: MaskEncoding, where: str, reason: str) -> np.ndarray:
    """Lossy binary mask: each pixel goes to whichever of the two values is nearer, with a warning."""
    exact = (values == encoding.background) | (values == (255 if encoding.foreground is None else encoding.foreground))
    _warn_snapped(where, reason, int(values.size - np.count_nonzero(exact)), values.size, "value")
    return _binary_classes(values, encoding, lossy=True)


def _snap_index(values: np.ndarray, num_classes: int, ignore_index: int, where: str, reason: str) -> np.ndarray:
    """Lossy index mask: values that are no class (nor ignore) go to the nearest one that is."""
    present, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    valid = np.append(np.arange(num_classes), ignore_index)
    bad = ~np.isin(present, valid)
    mapped = present.astype(np.int64)
    if bad.any():
        nearest, distance = _nearest(present[bad, None], valid[:, None])
        _refuse_far_regions(where, present[bad, None], counts[bad], distance, values.size, "gray")
        mapped[bad] = valid[nearest]
    _warn_snapped(where, reason, int(counts[bad].sum()), values.size, "value")
    return mapped.astype(np.uint8)[inverse.reshape(values.shape)]


def _decode(values: np.ndarray, encoding: MaskEncoding, num_classes: int, ignore_index: int,
            path: str | Path | None, lossy_reason: str | None) -> np.ndarray:
    """decode_mask with the reason (or None) for treating this mask as lossy."""
    where = f"{path}: " if path is not None else ""
    if encoding.kind == "color":
        assert encoding.colors is not None
        if num_classes != len(encoding.colors):
            raise ConfigError(
                f"color masks have {len(encoding.colors)} classes (one per color), got num_classes={num_classes}"
            )
        _check_classes(num_classes, ignore_index)
        if values.ndim == 3 and values.shape[2] in (3, 4):
            rgb = values[..., :3]
        elif values.ndim == 2:
            rgb = _gray_to_rgb(values, where)  # a gray mask among color masks
        else:
            raise DataError(f"{where}color mask must be HxWx3 (RGB), got shape {values.shape}")
        if rgb.dtype != np.uint8:
            raise DataError(f"{where}color mask must hold 8-bit colors, got {rgb.dtype}")
        return _decode_color(rgb, encoding, ignore_index, where, lossy_reason)
    if values.ndim == 3 and values.shape[2] in (3, 4):
        raise DataError(
            f"{where}is an RGB color mask, but the masks were read as {describe_encoding(encoding)}; "
            "color masks need a color table (detect_encoding finds one, or give a palette file)"
        )
    if values.ndim != 2:
        raise DataError(f"{where}mask must be 2-D (height x width), got shape {values.shape}")
    if encoding.kind == "binary":
        if num_classes != 2:
            raise ConfigError(f"binary masks have 2 classes (background, foreground), got num_classes={num_classes}")
        if lossy_reason is not None:
            return _snap_binary(values, encoding, where, lossy_reason)
        return _binary_classes(values, encoding, lossy=False)

    _check_classes(num_classes, ignore_index)
    if lossy_reason is not None:
        return _snap_index(values, num_classes, ignore_index, where, lossy_reason)
    present = np.unique(values)
    bad = [int(v) for v in present if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (f", … and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(
            f"{where}mask values [{shown}] outside the 0..{num_classes - 1} classes ({num_classes} classes)"
        )
    return values.astype(np.uint8)


def decode_mask(
    values: np.ndarray,
    encoding: MaskEncoding,
    num_classes: int,
    ignore_index: int = 255,
    path: str | Path | None = None,
    *,
    lossy: bool | None = None,
) -> np.ndarray:
    """Turn raw mask values (HxW, or HxWx3 colors) into an HxW uint8 class-index array; lossy=None: encoding.lossy."""
    lossy = encoding.lossy if lossy is None else lossy
    return _decode(values, encoding, num_classes, ignore_index, path, "lossy mask" if lossy else None)


def read_mask(path: str | Path, encoding: MaskEncoding, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Read and decode a mask file into an HxW uint8 class-index array (JPEG masks snapped, with a warning)."""
    path = Path(path)
    raw = _load_mask(path)
    reason = "lossy JPEG mask" if raw.jpeg else ("lossy mask" if encoding.lossy else None)
    values = raw.rgb(path) if encoding.kind == "color" else raw.values
    return _decode(values, encoding, num_classes, ignore_index, path, reason)


# --- encoding back ------------------------------------------------------------------------------------


def encode_mask(mask: np.ndarray, encoding: MaskEncoding, ignore_index: int = 255) -> np.ndarray:
    """Inverse of decoding: class indices -> the dataset's own values (binary values, RGB colors or indices)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise DataError(f"a class-index mask must be a 2-D integer array, got shape {mask.shape}, dtype {mask.dtype}")
    present = np.unique(mask).astype(np.int64)
    if encoding.kind == "index":
        bad = present[(present < 0) | (present > 255)]
        if bad.size:
            raise DataError(f"mask values {bad[:10].tolist()} do not fit a uint8 index mask")
        return mask.astype(np.uint8)
    if encoding.kind == "binary":
        bad = present[(present != 0) & (present != 1)]
        if bad.size:
            raise DataError(f"a binary mask holds classes 0 and 1 only, got values {bad[:10].tolist()}")
        foreground = 255 if encoding.foreground is None else encoding.foreground
        background = encoding.background
        assert background is not None
        top = max(foreground, background)
        dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int32
        return np.where(mask == 1, foreground, background).astype(dtype)
    assert encoding.colors is not None
    lut = np.zeros((256, 3), np.uint8)
    known = np.zeros(256, bool)
    lut[: len(encoding.colors)] = encoding.colors
    known[: len(encoding.colors)] = True
    if encoding.ignore_color is not None and 0 <= ignore_index <= 255:
        lut[ignore_index] = encoding.ignore_color
        known[ignore_index] = True
    bad = present[(present < 0) | (present > 255)]
    if not bad.size:
        bad = present[~known[present]]
    if bad.size:
        raise DataError(
            f"mask values {bad[:10].tolist()} have no color in the table of {len(encoding.colors)} classes"
            + ("" if encoding.ignore_color is not None else " (and the encoding has no ignore color)")
        )
    return lut[mask.astype(np.intp)]


_WRITE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


def write_mask(path: str | Path, mask: np.ndarray, encoding: MaskEncoding, ignore_index: int = 255) -> Path:
    """Write a class-index mask in the dataset's own encoding (.png, .tif/.tiff or .npy; lossless only), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITE_FORMATS and suffix != NPY_SUFFIX:
        raise ConfigError(
            f"{path}: masks are written as .png, .tif/.tiff or .npy (lossless); {suffix or 'no suffix'} is not one"
        )
    encoded = encode_mask(mask, encoding, ignore_index)
    with atomic_path(path) as tmp:
        if suffix == NPY_SUFFIX:
            with open(tmp, "wb") as handle:  # a handle: np.save would append .npy to the temporary name
                np.save(handle, encoded, allow_pickle=False)
        else:
            Image.fromarray(encoded).save(tmp, format=_WRITE_FORMATS[suffix])
    return path


# --- detection -----------------------------------------------------------------------------------------------


def _evenly_spaced(paths: list[Path], count: int) -> list[Path]:
    """Up to `count` paths spread over the whole list (first and last included), deterministic."""
    if len(paths) <= count:
        return list(paths)
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    return [paths[i] for i in dict.fromkeys(picks.tolist())]


def _flat(plane: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
    """HxW bool: pixels equal to their 4 neighbours in `plane`, or within _FLAT_TOLERANCE of them in `pixels`.

    Class regions are flat, edges are not; JPEG noise inside a region stays within the tolerance.
    """
    height, width = plane.shape[:2]
    flat = np.zeros((height, width), bool)
    if height < 3 or width < 3:
        flat[:] = True  # too small to tell: every pixel counts
        return flat
    inner = np.ones((height - 2, width - 2), bool)
    if pixels is None:
        core = plane[1:-1, 1:-1]
        for neighbour in (plane[:-2, 1:-1], plane[2:, 1:-1], plane[1:-1, :-2], plane[1:-1, 2:]):
            inner &= core == neighbour
    else:
        channels = [pixels] if pixels.ndim == 2 else [pixels[..., c] for c in range(pixels.shape[2])]
        for channel in channels:  # one contiguous int16 plane at a time: far faster than a max over axis 2
            wide = channel.astype(np.int16 if channel.dtype == np.uint8 else np.int64)
            core = wide[1:-1, 1:-1]
            for neighbour in (wide[:-2, 1:-1], wide[2:, 1:-1], wide[1:-1, :-2], wide[1:-1, 2:]):
                inner &= np.abs(core - neighbour) <= _FLAT_TOLERANCE
    flat[1:-1, 1:-1] = inner
    return flat


@dataclass
class _Stats:
    """Per-value pixel counts of one or more masks: keys are gray values, or packed colors."""

    keys: np.ndarray
    counts: np.ndarray
    flat: np.ndarray  # pixels of each key inside flat regions, JPEG noise tolerated (see _flat); else = exact
    exact: np.ndarray  # pixels of each key equal to all 4 neighbours: artifacts almost never have any

    @staticmethod
    def of(plane: np.ndarray, lossy_pixels: np.ndarray | None = None) -> _Stats:
        """Count an HxW plane of keys (gray values or packed colors); lossy_pixels: judge flatness with tolerance."""
        keys, inverse, counts = np.unique(plane, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        exact = np.bincount(inverse, _flat(plane).reshape(-1), len(keys)).astype(np.int64)
        # The tolerant pass costs a few full-image passes, so only JPEG masks pay for it.
        flat = exact if lossy_pixels is None else np.bincount(
            inverse, _flat(plane, lossy_pixels).reshape(-1), len(keys)).astype(np.int64)
        return _Stats(keys.astype(np.int64), counts.astype(np.int64), flat, exact)

    @staticmethod
    def merge(parts: Sequence[_Stats]) -> _Stats:
        """Sum counts over several masks."""
        keys, inverse = np.unique(np.concatenate([p.keys for p in parts]), return_inverse=True)
        counts = np.bincount(inverse, np.concatenate([p.counts for p in parts]), len(keys)).astype(np.int64)
        flat = np.bincount(inverse, np.concatenate([p.flat for p in parts]), len(keys)).astype(np.int64)
        exact = np.bincount(inverse, np.concatenate([p.exact for p in parts]), len(keys)).astype(np.int64)
        return _Stats(keys, counts, flat, exact)

    def without(self, key: int) -> _Stats:
        """The same counts with one key left out."""
        keep = self.keys != key
        return _Stats(self.keys[keep], self.counts[keep], self.flat[keep], self.exact[keep])


@dataclass
class _FileSurvey:
    """One sampled mask: its raw values' statistics, and how to see them as colors."""

    path: Path
    jpeg: bool
    color: bool  # a true-color RGB mask
    gray: _Stats | None  # counts of the raw values (gray values or palette indices); None for color masks
    colors: _Stats | None  # counts of packed colors; None when the values are not 8-bit


def _survey_file(path: Path) -> _FileSurvey:
    """Read one mask and count its values and colors."""
    raw = _load_mask(path)
    if raw.values.ndim == 3:
        return _FileSurvey(path, raw.jpeg, True, None,
                           _Stats.of(pack_colors(raw.values), raw.values if raw.jpeg else None))
    gray = _Stats.of(raw.values, raw.values if raw.jpeg else None)
    colors = None
    if raw.palette is not None:
        colors = _Stats.of(pack_colors(raw.palette[raw.values]))
    elif gray.keys.size and gray.keys.min() >= 0 and gray.keys.max() <= 255:
        colors = _Stats(gray.keys * 0x010101, gray.counts, gray.flat, gray.exact)  # gray v is the color (v, v, v)
    return _FileSurvey(path, raw.jpeg, False, gray, colors)


def _levels(stats: _Stats, space: str) -> np.ndarray:
    """Indices (into stats.keys) of the class levels of a lossy mask, ascending.

    Flat pixels are binned (colors in cubes of _LEVEL_BIN); the fullest bins, by flat pixels, are the classes,
    each represented by its most frequent flat value. Bins close to a chosen level are the same class rendered
    with codec noise (gray values: unless big enough to be a class of their own, as 1 is next to 0).
    """
    points = unpack_colors(stats.keys).astype(np.int64) if space == "color" else stats.keys[:, None]
    used = np.flatnonzero(stats.flat)
    if used.size == 0:
        return np.zeros(0, np.int64)
    bins = points[used] // _LEVEL_BIN[space]
    bin_keys = (bins[:, 0] << 40) | (bins[:, 1] << 20) | bins[:, 2] if space == "color" else bins[:, 0]
    unique_bins, inverse = np.unique(bin_keys, return_inverse=True)
    bin_flat = np.bincount(inverse, stats.flat[used], len(unique_bins))
    total = float(stats.flat.sum())
    chosen: list[int] = []
    for b in np.lexsort((unique_bins, -bin_flat)):  # fullest first; ties by bin, deterministic
        support = bin_flat[b]
        if support < _LEVEL_MIN_PIXELS or support < _LEVEL_MIN_SHARE * total:
            break
        members = used[inverse == b]
        mode = int(members[np.argmax(stats.flat[members])])
        if chosen:
            _, distance = _nearest(points[mode : mode + 1], points[chosen])
            own_class = space == "gray" and support >= _LEVEL_OWN_SHARE * total
            if distance[0] <= _MERGE_RADIUS[space] and not own_class:
                continue
        chosen.append(mode)
    return np.sort(np.asarray(chosen, np.int64))


def _content_looks_lossy(stats: _Stats, space: str) -> bool:
    """Many distinct values that never form a flat patch, lying near class levels: a lossily saved mask."""
    levels = _levels(stats, space)
    if levels.size == 0:
        return False
    rest = np.setdiff1d(np.arange(len(stats.keys)), levels)
    rest = rest[stats.exact[rest] == 0]
    if len(rest) < max(_ARTIFACT_MIN_DISTINCT, len(stats.keys) // 2):
        return False
    points = unpack_colors(stats.keys) if space == "color" else stats.keys[:, None]
    _, distance = _nearest(points[rest], points[levels])
    return _looks_lossy(stats.counts[rest], distance, space)


@dataclass(frozen=True)
class MaskSurvey:
    """What detection found in a sample of masks: the encoding, the class count and pixels per class."""

    encoding: MaskEncoding
    num_classes: int
    counts: tuple[int, ...]  # sampled pixels per class, in class order
    ignored: int  # sampled pixels read as ignore_index
    files: int  # masks sampled and read
    unreadable: tuple[str, ...] = ()  # errors of sampled masks that could not be read (left out of the counts)


def _class_counts(stats: _Stats, classes: np.ndarray, num_classes: int,
                  ignore_index: int) -> tuple[tuple[int, ...], int]:
    """Pixels per class, and ignored pixels, from per-key counts and each key's class."""
    per_class = np.bincount(classes.astype(np.int64), stats.counts, minlength=256)
    return tuple(int(c) for c in per_class[:num_classes]), int(per_class[ignore_index])


def _color_survey(files: list[_FileSurvey], encoding: MaskEncoding | None, *, ignore_color: Color | None,
                  ignore_index: int, max_colors: int, where: str) -> MaskSurvey:
    """Color masks: use the given table (a palette file), or find the colors in the sample."""
    for f in files:
        if f.colors is None:
            raise DataError(f"{f.path}: mask values do not fit 8-bit colors, but the other masks are RGB color masks")
    stats = _Stats.merge([f.colors for f in files if f.colors is not None])
    jpeg = any(f.jpeg for f in files)
    if encoding is None:
        ignore_key = None if ignore_color is None else int(pack_colors(np.asarray(ignore_color, np.uint8)))
        found, lossy = _find_colors(stats, jpeg=jpeg, max_colors=max_colors, where=where, skip=ignore_key)
        if not found.size:
            raise DataError(f"{where}masks hold no color besides the ignore color")
        encoding = MaskEncoding("color", colors=[_color_tuple(rgb) for rgb in unpack_colors(found)],
                                ignore_color=ignore_color, lossy=lossy)
    elif jpeg:
        encoding = replace(encoding, lossy=True)
    assert encoding.colors is not None
    num_classes = len(encoding.colors)
    _check_classes(num_classes, ignore_index)
    lookup = _ColorLookup.of(encoding, ignore_index)
    reason = "lossy mask" if encoding.lossy else None
    classes, _, reason = _classify_colors(stats.keys.astype(np.uint32), stats.counts, lookup, where, reason)
    if reason is not None:
        encoding = replace(encoding, lossy=True)  # a palette file's colors, smeared by compression
    counts, ignored = _class_counts(stats, classes, num_classes, ignore_index)
    return MaskSurvey(encoding, num_classes, counts, ignored, len(files))


def _find_colors(stats: _Stats, *, jpeg: bool, max_colors: int, where: str,
                 skip: int | None) -> tuple[np.ndarray, bool]:
    """The class colors (packed, ascending) in color statistics, and whether the masks look lossy."""
    if skip is not None:
        stats = stats.without(skip)
    lossy = jpeg or len(stats.keys) > max_colors or (
        len(stats.keys) >= _ARTIFACT_MIN_DISTINCT and _content_looks_lossy(stats, "color"))
    found = stats.keys[_levels(stats, "color")] if lossy else stats.keys
    unexplained = False
    if lossy and not jpeg and found.size:
        # Not JPEG, yet too many colors: accept them as artifacts only if they hug a few flat class colors.
        _, distance = _nearest(unpack_colors(stats.keys), unpack_colors(found))
        unexplained = stats.counts[distance <= _NEAR["color"]].sum() < _ARTIFACT_NEAR_FRACTION * stats.counts.sum()
    if unexplained or len(found) > max_colors or not found.size:
        raise DataError(
            f"{where}masks hold {len(stats.keys)} distinct colors, more than max_colors={max_colors} class colors; "
            "class-color masks have one flat color per class (are these photos, or resized with interpolation?)"
        )
    return np.sort(found), lossy


def discover_colors(mask_paths: Sequence[str | Path], max_colors: int = 256) -> list[tuple[Color, int]]:
    """(color, pixel count) of every class color in these masks, numbered by packed 0xRRGGBB value (black first).

    Lossy (JPEG) masks give their flat class colors, each with the pixels that snap to it.
    """
    if not mask_paths:
        raise DataError("no masks given to discover colors in")
    files = [_survey_file(Path(p)) for p in mask_paths]
    for f in files:
        if f.colors is None:
            raise DataError(f"{f.path}: mask values do not fit 8-bit colors")
    stats = _Stats.merge([f.colors for f in files if f.colors is not None])
    where = f"{Path(mask_paths[0]).parent}: "
    found, lossy = _find_colors(stats, jpeg=any(f.jpeg for f in files), max_colors=max_colors, where=where, skip=None)
    counts = stats.counts  # clean masks: found is every color, in the same (ascending) order
    if lossy:
        nearest, _ = _nearest(unpack_colors(stats.keys), unpack_colors(found))
        counts = np.bincount(nearest, stats.counts, len(found))
    return [(_color_tuple(rgb), int(n)) for rgb, n in zip(unpack_colors(found), counts)]


def _refuse_wide(classes: np.ndarray, sample_dir: Path, ignore_index: int) -> None:
    """Class indices must fit the uint8 mask contract and stay below the ignore value."""
    limit = min(ignore_index, 255)
    top = int(classes.max())
    if top >= limit:
        hint = (
            "; a mask is a uint8 class-index array, so 16-bit label values of 256 and above cannot be classes "
            "(a 16-bit binary mask is 0/65535): remap the labels to 0..N-1"
            if top > 255 else ""
        )
        raise DataError(
            f"masks in {sample_dir} have values up to {top}; class indices must stay below {limit} "
            f"(at most 255 classes, and the ignore value is not a class){hint}"
        )


def _gray_survey(files: list[_FileSurvey], *, foreground: int | None, ignore_index: int,
                 sample_dir: Path) -> MaskSurvey:
    """Grayscale / palette-index masks: binary or class indices, clean or lossy."""
    stats = _Stats.merge([f.gray for f in files if f.gray is not None])
    seen = set(stats.keys.tolist())
    eight_bit = bool(stats.keys.min() >= 0 and stats.keys.max() <= 255)
    lossy = eight_bit and (any(f.jpeg for f in files) or _content_looks_lossy(stats, "gray"))
    values = stats.keys[_levels(stats, "gray")] if lossy else stats.keys
    if lossy and values.size == 0:
        values = stats.keys[[int(np.argmax(stats.counts))]]
    levels = [int(v) for v in values]

    if foreground is not None:
        if foreground not in seen:
            raise DataError(
                f"foreground value {foreground} occurs in none of the {len(files)} masks sampled "
                f"(from {sample_dir}); values seen: {sorted(seen)[:20]}"
            )
        others = [v for v in levels if v != foreground]
        # The other value is recorded only when there is exactly one: "class k versus the rest" has none.
        background = others[0] if len(others) == 1 else None
        encoding = MaskEncoding("binary", foreground, background, lossy=lossy)
    elif set(levels) <= {0, 1} and 1 in levels:
        encoding = MaskEncoding("binary", 1, 0, lossy=lossy)
    elif set(levels) <= {0, 255} and 255 in levels:
        encoding = MaskEncoding("binary", 255, 0, lossy=lossy)
    elif set(levels) <= {0, 65535} and 65535 in levels:
        encoding = MaskEncoding("binary", 65535, 0, lossy=lossy)
    elif set(levels) == {0}:
        encoding = MaskEncoding("binary", lossy=lossy)  # all background: any non-zero value is foreground
    elif lossy and len(levels) == 2:
        encoding = MaskEncoding("binary", levels[1], levels[0], lossy=True)  # e.g. a JPEG of 0/200
    else:
        classes = np.asarray([v for v in levels if v != ignore_index], np.int64)
        if classes.size == 0:
            raise DataError(f"masks in {sample_dir} hold only the ignore value {ignore_index}")
        if classes.min() < 0:
            negative = sorted(int(v) for v in classes if v < 0)[:10]
            raise DataError(f"masks in {sample_dir} have negative values {negative}")
        _refuse_wide(classes, sample_dir, ignore_index)
        top = int(classes.max())
        encoding = MaskEncoding("index", lossy=lossy)
        num_classes = top + 1
        keys = stats.keys
        if lossy:
            valid = np.append(np.arange(num_classes), ignore_index)
            nearest, _ = _nearest(keys[:, None], valid[:, None])
            keys = valid[nearest]
        keys = np.where((keys >= 0) & (keys < num_classes), keys, ignore_index)
        counts, ignored = _class_counts(stats, keys, num_classes, ignore_index)
        return MaskSurvey(encoding, num_classes, counts, ignored, len(files))

    _warn_strays(files, encoding, sample_dir)
    counts, _ = _class_counts(stats, _binary_classes(stats.keys, encoding, lossy), 2, ignore_index)
    return MaskSurvey(encoding, 2, counts, 0, len(files))


def survey_masks(
    mask_paths: Sequence[str | Path],
    *,
    foreground: int | None = None,
    max_files: int = 50,
    ignore_index: int = 255,
    palette: str | Path | tuple[Sequence[str], Sequence[Color]] | None = None,
    ignore_color: Sequence[int] | None = None,
    max_colors: int = 256,
) -> MaskSurvey:
    """Detect the encoding of a sample of masks and count the sampled pixels per class (see detect_encoding)."""
    if not mask_paths:
        raise DataError("no masks given to detect the mask encoding from")
    if max_files < 1:
        raise ConfigError(f"max_files must be at least 1, got {max_files}")
    sample = _evenly_spaced([Path(p) for p in mask_paths], max_files)
    where = f"{sample[0].parent}: "
    ignore = None if ignore_color is None else _as_color(ignore_color, "ignore color")
    table = None
    if palette is not None:
        if foreground is not None:
            raise ConfigError("give either a palette (color masks) or a foreground value (binary masks), not both")
        names, colors = read_palette_file(palette) if isinstance(palette, (str, Path)) else palette
        if len(names) != len(colors):
            raise ConfigError(f"palette has {len(names)} names but {len(colors)} colors")
        # The ignore color leaves the class list, so a labelmap may list its "void" color like any other.
        pairs = [(str(n), tuple(int(v) for v in c)) for n, c in zip(names, colors)]
        pairs = [(n, c) for n, c in pairs if c != ignore]
        table = MaskEncoding("color", colors=[c for _, c in pairs], names=[n for n, _ in pairs], ignore_color=ignore)

    files: list[_FileSurvey] = []
    unreadable: list[DataError] = []
    for path in sample:
        try:
            files.append(_survey_file(path))
        except DataError as exc:  # a bad file is for validation to list; the others still show the encoding
            unreadable.append(exc)
    if not files:
        raise unreadable[0]

    if table is not None or any(f.color for f in files):
        colored = [f.path for f in files if f.color]
        if foreground is not None and len(colored) < len(files):
            # One odd file among grayscale masks: name it, not the folder.
            more = f" (and {len(colored) - 1} more)" if len(colored) > 1 else ""
            raise DataError(f"{colored[0]}: is an RGB color mask{more}, but the other masks are grayscale and "
                            f"foreground {foreground} is for grayscale binary masks; save it as a grayscale mask")
        if foreground is not None:
            raise ConfigError(
                f"{sample[0].parent}: the masks are RGB color masks; a foreground value is for grayscale binary masks"
            )
        survey = _color_survey(files, table, ignore_color=ignore, ignore_index=ignore_index,
                               max_colors=max_colors, where=where)
    elif ignore is not None:
        raise ConfigError(f"{sample[0].parent}: an ignore color is for RGB color masks; these masks are grayscale")
    else:
        survey = _gray_survey(files, foreground=foreground, ignore_index=ignore_index, sample_dir=sample[0].parent)
    return replace(survey, unreadable=tuple(str(exc) for exc in unreadable))


def detect_encoding(
    mask_paths: list[Path],
    *,
    foreground: int | None = None,
    max_files: int = 50,
    ignore_index: int = 255,
    palette: str | Path | tuple[Sequence[str], Sequence[Color]] | None = None,
    ignore_color: Sequence[int] | None = None,
    max_colors: int = 256,
) -> tuple[MaskEncoding, int]:
    """Guess (encoding, num_classes) from a sample of masks: 0/1, 0/255, 0/65535 binary; RGB color; else indices.

    palette: a palette file (or (names, colors)) fixing the color table; ignore_color: the RGB color of ignored
    pixels in color masks. JPEG masks (or masks full of compression artifacts) give a `lossy` encoding.
    """
    survey = survey_masks(mask_paths, foreground=foreground, max_files=max_files, ignore_index=ignore_index,
                          palette=palette, ignore_color=ignore_color, max_colors=max_colors)
    return survey.encoding, survey.num_classes


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
