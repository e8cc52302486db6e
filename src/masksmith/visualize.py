"""Palettes, overlays, image/truth/prediction grids, training curves and evaluation plots.

Conventions
-----------
* A mask is a 2-D integer array of class indices; ``ignore_index`` (default 255) marks unlabeled pixels.
* ``colors`` is a ``[K, 3]`` uint8 array (row ``k`` is the RGB color of class ``k``); ``default_colors``
  gives the PASCAL VOC palette for any ``K <= 256``.
* Every file is written through :func:`masksmith.fileio.atomic_path`, so an interrupted run never
  leaves a half-written PNG. The temporary file has a ``.tmp`` suffix, hence the explicit ``format=``
  on every save.
* Plots use ``matplotlib.figure.Figure`` directly, never ``pyplot``: no global state, no backend
  switching, safe to call from worker threads and in headless runs.
* Bad input raises ``ValueError`` with a one-line message (naming the file where there is one).
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from masksmith.fileio import atomic_path

__all__ = [
    "default_colors",
    "palette_image",
    "mask_png_bytes",
    "save_mask_png",
    "colorize",
    "overlay",
    "image_bytes",
    "save_image",
    "comparison_grid",
    "save_comparison_grid",
    "plot_curves",
    "plot_confusion",
    "plot_per_class",
]

PathLike = str | os.PathLike

_IGNORE_COLOR = (255, 255, 255)


# --------------------------------------------------------------------------- palettes and masks


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
    ignore_index: int = 255,
    ignore_color: Sequence[int] = _IGNORE_COLOR,
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


def mask_png_bytes(mask: np.ndarray, colors: np.ndarray, ignore_index: int = 255) -> bytes:
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


def save_mask_png(mask: np.ndarray, path: PathLike, colors: np.ndarray, ignore_index: int = 255) -> None:
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
    ignore_index: int = 255,
    ignore_color: Sequence[int] = _IGNORE_COLOR,
) -> np.ndarray:
    """Map a class-index mask to an ``HxWx3`` uint8 RGB image."""
    table = _as_colors(colors)
    arr = _as_mask(mask, len(table), ignore_index)
    return _lut(table, ignore_index, ignore_color)[arr]


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
    ignore_index: int = 255,
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
    color = _lut(table, ignore_index, _IGNORE_COLOR)[arr]
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


# --------------------------------------------------------------------------- comparison grids


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A scalable font: matplotlib ships DejaVu Sans, so no system font is needed."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # noqa: BLE001 - any failure just means the bitmap fallback
        return ImageFont.load_default()


def _text_width(font: Any, text: str) -> float:
    return float(font.getlength(text))


def _fit_text(font: Any, text: str, width: float) -> str:
    """Cut ``text`` with an ellipsis so it fits ``width`` pixels."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "…") > width:
        text = text[:-1]
    return text + "…" if text else ""


def _fit_tile(rgb: np.ndarray, height: int, max_width: int, nearest: bool) -> np.ndarray:
    """Scale to `height` pixels tall, or less when that would be wider than `max_width` (aspect kept)."""
    h, w = rgb.shape[:2]
    # A 10000x16 strip scaled to the row height alone would be a 160000-pixel-wide tile.
    scale = min(height / h, max_width / w)
    width, tall = max(1, min(max_width, round(w * scale))), max(1, min(height, round(h * scale)))
    if (h, w) == (tall, width):
        return rgb
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((width, tall), resample))


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class-index mask (values kept exactly)."""
    if mask.shape == shape:
        return mask
    rows = (np.arange(shape[0]) * mask.shape[0] // shape[0]).clip(0, mask.shape[0] - 1)
    cols = (np.arange(shape[1]) * mask.shape[1] // shape[1]).clip(0, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def _class_name(class_names: Sequence[str] | None, index: int) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return f"class {index}"


def comparison_grid(
    rows: list[dict],
    colors: np.ndarray,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str | None = None,
    tile_height: int = 256,
    alpha: float = 0.5,
    background_index: int | None = 0,
    max_tile_width: int | None = None,
) -> np.ndarray:
    """Draw rows of image | truth | prediction | overlay tiles with captions and a class legend; return RGB uint8.

    Each row is ``{"image", "truth" (or None), "prediction", "caption"}``. Tiles are scaled to
    ``tile_height`` (masks nearest-neighbour), shorter when that would be wider than ``max_tile_width``
    (default: twice the height), aspect kept, so the grid stays small whatever the images' shapes.
    The truth column is left out when every truth is None;
    the overlay shows the prediction. The legend lists the classes that occur in any truth or prediction.
    """
    if not rows:
        raise ValueError("comparison_grid needs at least one row")
    if tile_height < 8:
        raise ValueError(f"tile_height must be at least 8, got {tile_height}")
    max_width = 2 * tile_height if max_tile_width is None else max_tile_width
    if max_width < 8:
        raise ValueError(f"max_tile_width must be at least 8, got {max_width}")
    table = _as_colors(colors)
    show_truth = any(row.get("truth") is not None for row in rows)
    headers = ["image"] + (["truth"] if show_truth else []) + ["prediction", "overlay"]

    tiles: list[list[np.ndarray | None]] = []
    captions: list[str] = []
    present: set[int] = set()
    for i, row in enumerate(rows):
        if "image" not in row or "prediction" not in row:
            raise ValueError(f"row {i}: needs 'image' and 'prediction'")
        image = _as_rgb(row["image"], what=f"row {i} image")
        pred = _as_mask(row["prediction"], len(table), ignore_index, what=f"row {i} prediction")
        truth = row.get("truth")
        if truth is not None:
            truth = _as_mask(truth, len(table), ignore_index, what=f"row {i} truth")
            present.update(np.unique(truth).tolist())
        present.update(np.unique(pred).tolist())
        # Predictions are normally at image size already; resizing keeps a mismatched row drawable.
        blended = overlay(
            image,
            _resize_mask(pred, image.shape[:2]),
            table,
            alpha=alpha,
            ignore_index=ignore_index,
            background_index=background_index,
        )
        row_tiles: list[np.ndarray | None] = [_fit_tile(image, tile_height, max_width, nearest=False)]
        if show_truth:
            row_tiles.append(
                None if truth is None else _fit_tile(colorize(truth, table, ignore_index), tile_height, max_width, True)
            )
        row_tiles.append(_fit_tile(colorize(pred, table, ignore_index), tile_height, max_width, True))
        row_tiles.append(_fit_tile(blended, tile_height, max_width, nearest=False))
        tiles.append(row_tiles)
        captions.append(str(row.get("caption") or ""))

    # Layout, all in pixels: one shared column width so the columns line up across rows.
    font_size = int(np.clip(tile_height // 16, 11, 22))
    font = _font(font_size)
    title_font = _font(font_size + 4)
    pad = max(4, font_size // 3)
    cell_w = max(t.shape[1] for row_tiles in tiles for t in row_tiles if t is not None)
    cell_w = max(cell_w, int(max(_text_width(font, h) for h in headers)) + 2 * pad)
    ncols = len(headers)
    width = pad + ncols * (cell_w + pad)
    line_h = font_size + pad
    title_h = (font_size + 4 + 2 * pad) if title else 0
    header_h = line_h + pad
    caption_h = line_h + pad // 2 if any(captions) else 0
    row_h = caption_h + tile_height + pad

    legend_items = [(k, _class_name(class_names, k), tuple(int(c) for c in table[k])) for k in sorted(present)
                    if k != ignore_index]
    if ignore_index is not None and ignore_index in present:
        legend_items.append((ignore_index, "ignore", _IGNORE_COLOR))
    swatch = font_size
    legend_lines: list[list[tuple[str, tuple[int, int, int]]]] = [[]]
    x = pad
    for _, name, color in legend_items:
        name = _fit_text(font, name, width - 4 * pad - swatch)
        item_w = swatch + pad + int(_text_width(font, name)) + 3 * pad
        if legend_lines[-1] and x + item_w > width:
            legend_lines.append([])
            x = pad
        legend_lines[-1].append((name, color))
        x += item_w
    legend_h = (len(legend_lines) * (swatch + pad) + 2 * pad) if legend_items else 0

    height = title_h + header_h + len(rows) * row_h + legend_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    text_color = (20, 20, 20)
    y = 0
    if title:
        text = _fit_text(title_font, title, width - 2 * pad)
        draw.text((pad, pad), text, fill=text_color, font=title_font)
        y += title_h
    for c, header in enumerate(headers):
        x0 = pad + c * (cell_w + pad)
        tw = _text_width(font, header)
        draw.text((x0 + (cell_w - tw) / 2, y + pad), header, fill=text_color, font=font)
    y += header_h
    for r, row_tiles in enumerate(tiles):
        if caption_h:
            draw.text((pad, y + pad // 3), _fit_text(font, captions[r], width - 2 * pad), fill=(70, 70, 70), font=font)
        ty = y + caption_h
        for c, tile in enumerate(row_tiles):
            x0 = pad + c * (cell_w + pad)
            if tile is None:
                draw.rectangle([x0, ty, x0 + cell_w - 1, ty + tile_height - 1], fill=(235, 235, 235))
                msg = "no truth"
                draw.text(
                    (x0 + (cell_w - _text_width(font, msg)) / 2, ty + (tile_height - font_size) / 2),
                    msg, fill=(120, 120, 120), font=font,
                )
                continue
            canvas.paste(Image.fromarray(np.ascontiguousarray(tile)),
                         (x0 + (cell_w - tile.shape[1]) // 2, ty + (tile_height - tile.shape[0]) // 2))
        y += row_h
    if legend_items:
        draw.line([(pad, y), (width - pad, y)], fill=(200, 200, 200), width=1)
        ly = y + pad
        for line in legend_lines:
            x = pad
            for name, color in line:
                # A gray frame keeps black and white swatches visible on the white page.
                draw.rectangle([x, ly, x + swatch - 1, ly + swatch - 1], fill=color, outline=(110, 110, 110))
                draw.text((x + swatch + pad, ly - 1), name, fill=text_color, font=font)
                x += swatch + pad + int(_text_width(font, name)) + 3 * pad
            ly += swatch + pad
    return np.asarray(canvas)


def save_comparison_grid(
    rows: list[dict],
    path: PathLike,
    colors: np.ndarray,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str | None = None,
    **kwargs: Any,
) -> None:
    """Draw :func:`comparison_grid` and write it to ``path`` (PNG or JPEG by suffix; atomic)."""
    grid = comparison_grid(rows, colors, class_names=class_names, ignore_index=ignore_index, title=title, **kwargs)
    save_image(grid, path)


# --------------------------------------------------------------------------- plots (matplotlib)


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save_figure(fig: Any, out_png: PathLike, dpi: int = 110) -> None:
    with atomic_path(out_png) as tmp:
        # "tight" grows the canvas to whatever the labels need, so long class names are never clipped.
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.15)


def _read_metrics_csv(path: Path) -> dict[str, np.ndarray]:
    """Read a Lightning CSVLogger file into float columns (empty cells become NaN)."""
    if not path.is_file():
        raise ValueError(f"{path}: metrics file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        records = [r for r in reader if any(cell.strip() for cell in r)]
    if not header or not any(h.strip() for h in header):
        raise ValueError(f"{path}: metrics file is empty (no header row)")
    if not records:
        raise ValueError(f"{path}: metrics file has a header but no rows")
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        name = name.strip()
        if not name or name in columns:
            continue
        values = np.full(len(records), np.nan)
        for i, record in enumerate(records):
            if j < len(record) and record[j].strip():
                try:
                    values[i] = float(record[j])
                except ValueError:
                    pass  # a stray text cell is not a number to plot
        columns[name] = values
    return columns


def _x_axis(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """Per-row x values: the epoch, filled in from the step where a row lacks it."""
    n = len(next(iter(columns.values())))
    epoch = columns.get("epoch")
    step = columns.get("step")
    if epoch is None or np.isnan(epoch).all():
        if step is not None and not np.isnan(step).all():
            return step, "step"
        return np.arange(n, dtype=float), "row"
    epoch = epoch.copy()
    missing = np.isnan(epoch)
    if missing.any() and step is not None:
        # Callbacks such as LearningRateMonitor log with a step but no epoch: take the epoch of the
        # last row at or before that step.
        known = ~missing & ~np.isnan(step)
        if known.any():
            order = np.argsort(step[known], kind="stable")
            known_steps = step[known][order]
            known_epochs = epoch[known][order]
            fill = missing & ~np.isnan(step)
            idx = np.searchsorted(known_steps, step[fill], side="right") - 1
            epoch[fill] = known_epochs[np.clip(idx, 0, None)]
    return epoch, "epoch"


def _per_x(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` for every distinct ``x`` (NaNs dropped)."""
    ok = ~np.isnan(x) & ~np.isnan(y)
    if not ok.any():
        return np.empty(0), np.empty(0)
    xs, inverse = np.unique(x[ok], return_inverse=True)
    sums = np.bincount(inverse, weights=y[ok], minlength=len(xs))
    counts = np.bincount(inverse, minlength=len(xs))
    return xs, sums / counts


_LOWER_IS_BETTER = ("error", "err", "hausdorff", "distance", "mae", "mse", "rmse")


def plot_curves(metrics_csv: PathLike, out_png: PathLike, monitor: str | None = None) -> None:
    """Plot losses and validation metrics per epoch from a Lightning ``metrics.csv`` (atomic PNG).

    Panels: every column containing "loss"; every ``val_*`` column that is not a loss, with the best
    epoch of ``monitor`` (default: the first such column) marked; ``lr-*`` columns get a third
    panel when present. Step-level columns are averaged per epoch.
    """
    path = Path(metrics_csv)
    columns = _read_metrics_csv(path)
    x, xlabel = _x_axis(columns)
    names = list(columns)
    loss_cols = [c for c in names if "loss" in c.lower()]
    metric_cols = [c for c in names if c.lower().startswith("val_") and "loss" not in c.lower()]
    lr_cols = [c for c in names if c.lower().startswith("lr-") or c.lower() == "lr"]
    series = {c: _per_x(x, columns[c]) for c in loss_cols + metric_cols + lr_cols}
    series = {c: s for c, s in series.items() if len(s[0])}
    loss_cols = [c for c in loss_cols if c in series]
    metric_cols = [c for c in metric_cols if c in series]
    lr_cols = [c for c in lr_cols if c in series]
    if not loss_cols and not metric_cols:
        raise ValueError(f"{path}: no loss or val_* metric values to plot (columns: {', '.join(names)})")
    if monitor is not None and monitor not in metric_cols:
        raise ValueError(f"{path}: monitor column {monitor!r} not found among {metric_cols}")

    panels = [("losses", loss_cols), ("validation metrics", metric_cols)]
    if lr_cols:
        panels.append(("learning rate", lr_cols))
    fig = _new_figure(5.2 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    from matplotlib.ticker import MaxNLocator

    all_x = np.concatenate([s[0] for s in series.values()])
    x_lo, x_hi = float(all_x.min()), float(all_x.max())
    best_x = None
    for ax, (panel_title, cols) in zip(axes, panels):
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if xlabel == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if x_hi - x_lo < 1:  # a one-epoch run: widen so the integer locator has ticks to place
                ax.set_xlim(x_lo - 1, x_hi + 1)
        if not cols:
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        for c in cols:
            xs, ys = series[c]
            # Markers keep a one-epoch run (a single point) visible.
            ax.plot(xs, ys, marker="o", markersize=3 if len(xs) > 1 else 6, linewidth=1.5, label=c)
        if panel_title == "validation metrics":
            target = monitor or cols[0]
            xs, ys = series[target]
            lower = any(word in target.lower() for word in _LOWER_IS_BETTER)
            i = int(np.argmin(ys) if lower else np.argmax(ys))
            best_x = xs[i]
            ax.scatter([xs[i]], [ys[i]], marker="*", s=160, color="crimson", zorder=5,
                       label=f"best {target} = {ys[i]:.4g} ({xlabel} {xs[i]:g})")
        if panel_title == "learning rate":
            values = np.concatenate([series[c][1] for c in cols])
            if (values > 0).all() and values.max() / values.min() > 20:
                ax.set_yscale("log")
        ax.legend(fontsize=8, loc="best")
    if best_x is not None:
        for ax in axes[:2]:
            ax.axvline(best_x, color="crimson", linestyle="--", linewidth=0.8, alpha=0.6)
    _save_figure(fig, out_png)


def _compact(n: float) -> str:
    """Short count label: 950, 12.3k, 4.5M."""
    n = float(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.3g}{suffix}"
    return f"{n:.0f}"


def plot_confusion(
    matrix: np.ndarray,
    class_names: Sequence[str] | None,
    out_png: PathLike,
    normalize: bool = True,
) -> None:
    """Draw a confusion matrix (rows = truth, columns = prediction) as a heat map PNG (atomic).

    Rows are normalized to sum 1 when ``normalize``. Classes with no truth pixels are gray rows
    marked "(no truth)". Cell values are printed when K <= 20; the figure grows with K.
    """
    cm = np.asarray(matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {cm.shape}")
    k = cm.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{k} classes in the confusion matrix but {len(names)} class names")
    row_sums = cm.sum(axis=1)
    empty = row_sums == 0
    values = cm / np.where(empty, 1.0, row_sums)[:, None] if normalize else cm.copy()
    values[empty] = np.nan  # masked: drawn as an empty gray row, not as zeros
    labels_y = [f"{n} (no truth)" if e else n for n, e in zip(names, empty)]

    annotate = k <= 20
    cell = 0.55 if annotate else 0.26  # inches per cell
    tick_size = 10 if k <= 10 else 8 if k <= 30 else 6.5
    side = max(4.0, cell * k)
    fig = _new_figure(side + 3.0, side + 2.0)
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")
    vmax = 1.0 if normalize else max(float(np.nanmax(values)) if not empty.all() else 1.0, 1.0)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, shrink=1.0 if k <= 20 else 0.5)
    cbar.ax.tick_params(labelsize=8)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45 if k <= 10 else 90, ha="right" if k <= 10 else "center",
                       rotation_mode="anchor" if k <= 10 else "default", fontsize=tick_size)
    ax.set_yticklabels(labels_y, fontsize=tick_size)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("confusion matrix" + (" (rows normalized)" if normalize else " (pixel counts)"))
    if annotate:
        font = 9 if k <= 10 else 7
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                if math.isnan(v):
                    continue
                if normalize:
                    text = "0" if v == 0 else "<.01" if v < 0.005 else f"{v:.2f}"
                else:
                    text = _compact(v)
                ax.text(j, i, text, ha="center", va="center", fontsize=font,
                        color="white" if v > 0.6 * vmax else "black")
    _save_figure(fig, out_png)


def plot_per_class(per_class: list[dict], out_png: PathLike, metric: str = "iou") -> None:
    """Draw a horizontal bar chart of one per-class metric, best at the top, absent classes last (atomic PNG).

    Each entry is ``{"name", metric: float or None, "support"}``; None or NaN is shown as "absent".
    """
    if not per_class:
        raise ValueError("plot_per_class needs at least one class")
    if not any(metric in entry for entry in per_class):
        raise ValueError(f"no entry has the metric {metric!r} (keys: {sorted(per_class[0])})")

    def value(entry: dict) -> float | None:
        v = entry.get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    present = sorted((e for e in per_class if value(e) is not None), key=lambda e: -value(e))  # type: ignore[operator]
    absent = [e for e in per_class if value(e) is None]
    ordered = present + absent
    n = len(ordered)
    fig = _new_figure(7.5, max(2.5, 0.28 * n + 1.3))
    ax = fig.add_subplot()
    ys = np.arange(n)
    vals = [value(e) or 0.0 for e in ordered]
    top = max([1.0] + vals)
    ax.barh(ys[: len(present)], vals[: len(present)], color="#3a7dbf", height=0.7)
    for y, entry in zip(ys, ordered):
        v = value(entry)
        support = entry.get("support")
        extra = f"  (n={_compact(support)})" if support is not None else ""
        if v is None:
            ax.text(0.01 * top, y, "absent" + extra, va="center", fontsize=8, color="gray", style="italic")
        else:
            # A white backing keeps the label readable where the mean line crosses it.
            ax.text(v + 0.01 * top, y, f"{v:.3f}{extra}", va="center", fontsize=8, zorder=4,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.5))
    if present:
        mean = float(np.mean([value(e) for e in present]))
        ax.axvline(mean, color="crimson", linestyle="--", linewidth=1, zorder=1,
                   label=f"mean {metric} = {mean:.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(ys)
    ax.set_yticklabels([str(e.get("name", i)) for i, e in enumerate(ordered)], fontsize=8 if n > 30 else 9)
    ax.set_xlim(0, top * 1.25)  # room for the value labels
    if top == 1.0:
        ax.set_xticks(np.linspace(0.0, 1.0, 6))  # no ticks past 1 for a metric that cannot exceed it
    ax.set_ylim(n - 0.5, -0.5)  # inverted: best on top
    ax.set_xlabel(metric)
    ax.set_title(f"per-class {metric}")
    ax.grid(True, axis="x", alpha=0.3)
    _save_figure(fig, out_png)
