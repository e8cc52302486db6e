"""Class colors blended over images, and images encoded as PNG/JPEG bytes or files (atomic)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from masksmith.core.fileio import atomic_path
from masksmith.visualize.colors import IGNORE_COLOR, PathLike, _as_colors, _as_mask, _lut


def _as_rgb(image: Any, what: str = "image") -> np.ndarray:
    """Return an ``HxWx3`` uint8 copy-free view of a gray, gray+1, RGB or RGBA uint8 image."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 4:
        return arr[:, :, :3]
    raise ValueError(f"{what} must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")


def _boundaries(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (both sides of every label change)."""
    edge = np.zeros(mask.shape, dtype=bool)
    vertical = mask[1:, :] != mask[:-1, :]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    horizontal = mask[:, 1:] != mask[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    colors: np.ndarray,
    alpha: float = 0.5,
    *,
    ignore_index: int,
    background_index: int | None = 0,
    contours: bool = True,
) -> np.ndarray:
    """Blend class colors over an image (background and ignore pixels unchanged); return ``HxWx3`` uint8.

    With ``contours`` each region's 1-pixel inner border is drawn in its full class color, so thin
    structures stay visible at any ``alpha`` (``alpha=0`` gives outlines only).
    """
    rgb = _as_rgb(image)
    table = _as_colors(colors)
    arr = _as_mask(mask, len(table), ignore_index)
    if rgb.shape[:2] != arr.shape:
        raise ValueError(f"image is {rgb.shape[0]}x{rgb.shape[1]} but mask is {arr.shape[0]}x{arr.shape[1]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    foreground = np.ones(arr.shape, dtype=bool)
    if background_index is not None:
        foreground &= arr != background_index
    if ignore_index is not None:
        foreground &= arr != ignore_index
    out = rgb.copy()
    if not foreground.any():
        return out
    color = _lut(table, ignore_index, IGNORE_COLOR)[arr]
    # Blend only the selected pixels: a full-size float copy of a large photo is wasteful.
    blended = (1.0 - alpha) * rgb[foreground].astype(np.float32) + alpha * color[foreground].astype(np.float32)
    out[foreground] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if contours:
        # Inner side only, so background pixels really stay untouched.
        edge = _boundaries(arr) & foreground
        out[edge] = color[edge]
    return out


_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def image_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """An ``HxW``/``HxWx1``/``HxWx3``/``HxWx4`` uint8 array encoded as PNG or JPEG bytes."""
    if fmt not in ("PNG", "JPEG"):
        raise ValueError(f"unsupported image format {fmt!r} (use PNG or JPEG)")
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    img = Image.fromarray(np.ascontiguousarray(arr))
    buffer = io.BytesIO()
    if fmt == "JPEG":
        if img.mode == "RGBA":  # JPEG has no alpha channel
            img = img.convert("RGB")
        img.save(buffer, format="JPEG", quality=92)
    else:
        img.save(buffer, format="PNG")
    return buffer.getvalue()


def save_image(array: np.ndarray, path: PathLike) -> None:
    """Write an ``HxW``/``HxWx1``/``HxWx3``/``HxWx4`` uint8 array as PNG or JPEG (chosen by suffix; atomic)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _IMAGE_FORMATS:
        raise ValueError(f"{path}: unsupported image suffix {path.suffix!r} (use .png, .jpg or .jpeg)")
    try:
        data = image_bytes(array, _IMAGE_FORMATS[suffix])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
