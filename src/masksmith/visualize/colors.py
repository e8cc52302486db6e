"""Palettes and class-color images: the VOC palette, indexed mask PNGs, colorized masks.

A mask is a 2-D integer array of class indices; ``colors`` is a ``[K, 3]`` uint8 array (row ``k`` is
the RGB color of class ``k``). Bad input raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from masksmith.core.fileio import atomic_path

PathLike = str | os.PathLike

IGNORE_COLOR = (255, 255, 255)


def default_colors(num_classes: int) -> np.ndarray:
    """Return the PASCAL VOC palette for ``num_classes`` classes as a ``[K, 3]`` uint8 array.

    Class 0 is black, 1 is (128, 0, 0), 2 is (0, 128, 0), 3 is (128, 128, 0), ... The same palette
    is used for every K, binary included, so a binary foreground is dark red (128, 0, 0): the masks
    then open in any VOC-aware tool with familiar colors. All 256 entries are distinct.
    """
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if not 0 <= num_classes <= 256:
        raise ValueError(f"num_classes must be between 0 and 256 (one byte per class), got {num_classes}")
    index = np.arange(num_classes, dtype=np.int64)
    colors = np.zeros((num_classes, 3), dtype=np.int64)
    # VOC spreads the index bits over the channels, most significant color bit first, so that
    # neighbouring class indices get very different colors.
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            colors[:, channel] |= bit << (7 - shift)
    return colors.astype(np.uint8)


def _as_colors(colors: Any) -> np.ndarray:
    """Validate a ``[K, 3]`` color table and return it as uint8."""
    arr = np.asarray(colors)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"colors must have shape [K, 3], got {arr.shape}")
    if arr.shape[0] > 256:
        raise ValueError(f"at most 256 colors fit a palette, got {arr.shape[0]}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("colors must be RGB values in 0..255")
    return arr.astype(np.uint8)


def _as_mask(mask: Any, num_colors: int, ignore_index: int | None, what: str = "mask") -> np.ndarray:
    """Validate a class-index mask against a color table; return it as an int64 array."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array of class indices, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size == 0:
        return arr
    bad = (arr < 0) | (arr >= num_colors)
    if ignore_index is not None:
        bad &= arr != ignore_index
    if bad.any():
        value = int(arr[bad].flat[0])
        raise ValueError(
            f"{what} holds class {value} but only {num_colors} colors are given"
            + (f" (ignore_index is {ignore_index})" if ignore_index is not None else "")
        )
    return arr


def _lut(colors: np.ndarray, ignore_index: int | None, ignore_color: Sequence[int]) -> np.ndarray:
    """A 256-entry RGB lookup table: class colors, then the ignore color at ``ignore_index``."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colors)] = colors
    # The ignore color wins over a class color at the same index: ignored pixels must stand out.
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = np.asarray(ignore_color, dtype=np.uint8)
    return lut


def palette_image(
    mask: np.ndarray,
    colors: np.ndarray,
    *,
    ignore_index: int,
    ignore_color: Sequence[int] = IGNORE_COLOR,
) -> Image.Image:
    """Return a mode "P" image whose pixel values are the class indices and whose palette holds the colors."""
    table = _as_colors(colors)
    arr = _as_mask(mask, len(table), ignore_index)
    if arr.size and arr.max() > 255:
        raise ValueError(f"mask value {int(arr.max())} does not fit a palette image (max 255)")
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    # putpalette turns an "L" image into "P" without touching the pixel values (convert() would remap).
    img.putpalette(_lut(table, ignore_index, ignore_color).tobytes(), rawmode="RGB")
    return img


def mask_png_bytes(mask: np.ndarray, colors: np.ndarray, *, ignore_index: int) -> bytes:
    """A mask as indexed-PNG bytes: values are class indices, the palette shows the colors.

    The one mask encoder: `save_mask_png` writes these bytes and `masksmith serve` returns them, so a
    served mask equals the file `predict` writes byte for byte.
    """
    arr = np.asarray(mask)
    if arr.size and np.issubdtype(arr.dtype, np.integer) and (arr.max() > 255 or arr.min() < 0):
        raise ValueError(f"mask values must be 0..255 to fit an indexed PNG, got {int(arr.min())}..{int(arr.max())}")
    buffer = io.BytesIO()
    palette_image(arr, colors, ignore_index=ignore_index).save(buffer, format="PNG")
    return buffer.getvalue()


def save_mask_png(mask: np.ndarray, path: PathLike, colors: np.ndarray, *, ignore_index: int) -> None:
    """Write a mask as an indexed PNG: values are class indices, the palette shows the colors (atomic)."""
    try:
        data = mask_png_bytes(mask, colors, ignore_index=ignore_index)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def colorize(
    mask: np.ndarray,
    colors: np.ndarray,
    *,
    ignore_index: int,
    ignore_color: Sequence[int] = IGNORE_COLOR,
) -> np.ndarray:
    """Map a class-index mask to an ``HxWx3`` uint8 RGB image."""
    table = _as_colors(colors)
    arr = _as_mask(mask, len(table), ignore_index)
    return _lut(table, ignore_index, ignore_color)[arr]
