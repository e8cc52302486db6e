"""Comparison grids: rows of image | truth | prediction | overlay tiles with captions and a class legend."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from masksmith.visualize.colors import IGNORE_COLOR, PathLike, _as_colors, _as_mask, colorize
from masksmith.visualize.overlays import _as_rgb, overlay, save_image
from masksmith.visualize.text import drawable_text


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
        return drawable_text(class_names[index])
    return f"class {index}"


def comparison_grid(
    rows: list[dict],
    colors: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    ignore_index: int,
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
                None if truth is None
                else _fit_tile(colorize(truth, table, ignore_index=ignore_index), tile_height, max_width, True)
            )
        row_tiles.append(_fit_tile(colorize(pred, table, ignore_index=ignore_index), tile_height, max_width, True))
        row_tiles.append(_fit_tile(blended, tile_height, max_width, nearest=False))
        tiles.append(row_tiles)
        captions.append(drawable_text(row.get("caption") or ""))  # e.g. an image's file name: one line

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
        legend_items.append((ignore_index, "ignore", IGNORE_COLOR))
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
        text = _fit_text(title_font, drawable_text(title), width - 2 * pad)
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
    *,
    ignore_index: int,
    title: str | None = None,
    **kwargs: Any,
) -> None:
    """Draw :func:`comparison_grid` and write it to ``path`` (PNG or JPEG by suffix; atomic)."""
    grid = comparison_grid(rows, colors, class_names=class_names, ignore_index=ignore_index, title=title, **kwargs)
    save_image(grid, path)
