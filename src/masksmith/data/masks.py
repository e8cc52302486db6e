"""Read images and decode masks into 2-D class-index arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from masksmith.errors import ConfigError, DataError

# PIL modes whose pixels are one intensity value; everything else is treated as colour.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass(frozen=True)
class MaskEncoding:
    """How mask pixel values map to classes: class indices, or binary with a foreground value."""

    kind: Literal["index", "binary"]
    foreground: int | None = None  # binary only: the pixel value meaning foreground; None = any non-zero value

    def __post_init__(self) -> None:
        if self.kind not in ("index", "binary"):
            raise ConfigError(f"mask encoding kind must be 'index' or 'binary', got {self.kind!r}")
        if self.kind == "index" and self.foreground is not None:
            raise ConfigError("mask encoding 'index' takes no foreground value (foreground is for binary masks)")

    def to_dict(self) -> dict:
        """A JSON-ready dict, the form stored in configs and bundles."""
        return {"kind": self.kind, "foreground": self.foreground}

    @classmethod
    def from_dict(cls, d: dict) -> MaskEncoding:
        """Rebuild from `to_dict` output."""
        unknown = set(d) - {"kind", "foreground"}
        if unknown or "kind" not in d:
            raise ConfigError(f"mask encoding needs 'kind' (and optional 'foreground'), got keys {sorted(d)}")
        foreground = d.get("foreground")
        return cls(kind=d["kind"], foreground=None if foreground is None else int(foreground))


def _open(path: Path, what: str) -> Image.Image:
    """Open and fully decode a file, so truncation shows up here and not deep inside training."""
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: cannot read {what}: file is empty (0 bytes)")
        with Image.open(path) as image:
            image.load()
            # Masks are stored upright like their images; honour a rotation tag on either.
            ImageOps.exif_transpose(image, in_place=True)
        return image
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read {what}: file not found") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot read {what}: {reason}") from None


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


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image as HxWxC uint8 (C = channels, or 1 for grayscale files and 3 otherwise)."""
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels}")
    image = _open(path, "image")
    if channels is None:
        channels = 1 if image.mode in GRAYSCALE_MODES else 3
    array = _to_gray(image)[:, :, None] if channels == 1 else _to_rgb(image)
    return np.ascontiguousarray(array, dtype=np.uint8)


def image_channels(path: str | Path) -> int:
    """1 if the file is stored as grayscale, else 3; reads only the header."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image: file not found") from None
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot read image: {reason}") from None
    return 1 if mode in GRAYSCALE_MODES else 3


def read_mask_values(path: str | Path) -> np.ndarray:
    """Read a mask's raw pixel values as an HxW integer array (palette PNGs give their indices)."""
    path = Path(path)
    image = _open(path, "mask")
    mode = image.mode
    if mode == "1":
        return np.asarray(image).astype(np.uint8)
    if mode in ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image).copy()
    if mode in ("LA", "La", "PA"):
        return np.asarray(image)[..., 0].copy()
    if mode == "F":
        values = np.asarray(image)
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise DataError(f"{path}: mask has non-integer (float) values; save class indices as integers")
        return values.astype(np.int32)
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(image)[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].copy()  # a grayscale mask saved as RGB
        raise DataError(
            f"{path}: is an RGB color mask; convert it to class indices (color masks come in a later version)"
        )
    raise DataError(f"{path}: mask has unsupported image mode {mode}; save it as a grayscale or palette PNG")


def _check_classes(num_classes: int, ignore_index: int) -> None:
    """Class indices and the ignore value must fit a uint8 mask without colliding."""
    if not 1 <= num_classes <= 255:
        raise ConfigError(f"num_classes must be between 1 and 255, got {num_classes}")
    if not 0 <= ignore_index <= 255 or ignore_index < num_classes:
        raise ConfigError(
            f"ignore_index must be between num_classes ({num_classes}) and 255 so it cannot be a class, "
            f"got {ignore_index}"
        )


def decode_mask(
    values: np.ndarray,
    encoding: MaskEncoding,
    num_classes: int,
    ignore_index: int = 255,
    path: str | Path | None = None,
) -> np.ndarray:
    """Turn raw mask values into an HxW uint8 class-index array (ignore_index kept for index masks)."""
    where = f"{path}: " if path is not None else ""
    if values.ndim != 2:
        raise DataError(f"{where}mask must be 2-D (height x width), got shape {values.shape}")
    if encoding.kind == "binary":
        if num_classes != 2:
            raise ConfigError(f"binary masks have 2 classes (background, foreground), got num_classes={num_classes}")
        if encoding.foreground is None:
            return (values > 0).astype(np.uint8)
        return (values == encoding.foreground).astype(np.uint8)

    _check_classes(num_classes, ignore_index)
    present = np.unique(values)
    bad = [int(v) for v in present if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (f", … and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(
            f"{where}mask values [{shown}] outside the 0..{num_classes - 1} classes ({num_classes} classes)"
        )
    return values.astype(np.uint8)


def read_mask(path: str | Path, encoding: MaskEncoding, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Read and decode a mask file into an HxW uint8 class-index array."""
    return decode_mask(read_mask_values(path), encoding, num_classes, ignore_index, path=path)


def _evenly_spaced(paths: list[Path], count: int) -> list[Path]:
    """Up to `count` paths spread over the whole list (first and last included), deterministic."""
    if len(paths) <= count:
        return list(paths)
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    return [paths[i] for i in dict.fromkeys(picks.tolist())]


def detect_encoding(
    mask_paths: list[Path],
    *,
    foreground: int | None = None,
    max_files: int = 50,
    ignore_index: int = 255,
) -> tuple[MaskEncoding, int]:
    """Guess (encoding, num_classes) from a sample of masks: {0,255} or {0,1} is binary, else class indices."""
    if not mask_paths:
        raise DataError("no masks given to detect the mask encoding from")
    if max_files < 1:
        raise ConfigError(f"max_files must be at least 1, got {max_files}")
    sample = _evenly_spaced([Path(p) for p in mask_paths], max_files)
    seen: set[int] = set()
    for path in sample:
        seen.update(int(v) for v in np.unique(read_mask_values(path)))

    if foreground is not None:
        if foreground not in seen:
            raise DataError(
                f"foreground value {foreground} occurs in none of the {len(sample)} masks sampled "
                f"(from {sample[0].parent}); values seen: {sorted(seen)[:20]}"
            )
        return MaskEncoding("binary", foreground), 2
    if seen <= {0, 255} or seen <= {0, 1}:
        return MaskEncoding("binary"), 2
    classes = seen - {ignore_index}
    if min(classes) < 0:
        raise DataError(f"masks in {sample[0].parent} have negative values {sorted(v for v in classes if v < 0)[:10]}")
    top = max(classes)
    if top >= min(ignore_index, 255):
        raise DataError(
            f"masks in {sample[0].parent} have values up to {top}; class indices must stay below "
            f"{min(ignore_index, 255)} "
            "(at most 255 classes, and the ignore value is not a class)"
        )
    return MaskEncoding("index"), top + 1
