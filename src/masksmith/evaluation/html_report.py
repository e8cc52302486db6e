"""`evaluate --html`: one self-contained report.html (metrics, per-class bars, confusion, curves, per-image table).

Everything is inside the file: the CSS and JS (report_page/, package data), the images as data: URIs.
Every name that comes from the user's files (images, classes, paths) is HTML-escaped.
"""

from __future__ import annotations

import base64
import heapq
import html
import math
import tempfile
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from masksmith.core.fileio import write_text_atomic
from masksmith.core.version import __version__
from masksmith.visualize import colorize, image_bytes, plot_curves

THUMBNAIL_SIZE = 96  # pixels on the long side
# Thumbnails are kept for at most this many images (the lowest Dice): ~3 x 4 KB each, so the page and the
# memory it takes stay bounded however large the split; the other rows show their scores only.
MAX_THUMBNAILS = 500
# Up to this many classes the confusion cells print their percentage; beyond it they are colored squares
# with the numbers in their tooltips (59 clothing classes stay readable).
CONFUSION_TEXT_CLASSES = 12
MASK_CLASS = ' class="mask"'  # masks are scaled with crisp pixels, photos smoothly
SUMMARY = [("pixel_accuracy", "pixel accuracy"), ("miou", "mean IoU"), ("miou_no_background", "mean IoU, no background"),
           ("mean_dice", "mean Dice"), ("mean_dice_no_background", "mean Dice, no background"),
           ("mean_precision", "mean precision"), ("mean_recall", "mean recall"),
           ("image_dice", "mean per-image Dice")]


def _e(value: Any) -> str:
    """Text or attribute value, escaped (quotes too)."""
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    """A score, or "n/a" where it is undefined (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<span class="na">n/a</span>'
    return f"{value:.{digits}f}"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _shrink(shape: Sequence[int], size: int) -> tuple[int, int]:
    """(width, height) with the long side at most `size`, at least 1 pixel each."""
    height, width = shape[:2]
    scale = min(1.0, size / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumbnails(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, colors: np.ndarray,
               ignore_index: int, size: int = THUMBNAIL_SIZE) -> dict[str, str]:
    """Data URIs of small versions of an image (JPEG) and its truth and prediction (colored PNGs)."""
    width, height = _shrink(image.shape, size)
    # Area averaging for the photo; nearest for masks so that no class index is invented at a border.
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    out = {"image": _data_uri(image_bytes(small, "JPEG"), "image/jpeg")}
    for key, mask in (("truth", truth), ("prediction", prediction)):
        shrunk = cv2.resize(np.ascontiguousarray(mask, dtype=np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        out[key] = _data_uri(image_bytes(colorize(shrunk, colors, ignore_index=ignore_index)), "image/png")
    return out


class ThumbnailKeeper:
    """Thumbnails made while evaluate iterates, kept for the `limit` images with the lowest Dice."""

    def __init__(self, colors: np.ndarray, ignore_index: int, limit: int | None = None):
        self.colors = colors
        self.ignore_index = ignore_index
        self.limit = MAX_THUMBNAILS if limit is None else limit
        self._heap: list[tuple[float, int, dict[str, str]]] = []  # (-dice, -index): the root is the one to drop

    def add(self, index: int, dice: float | None, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
        """Thumbnail image `index` if it is among the `limit` worst so far (an image without Dice ranks last)."""
        rank = math.inf if dice is None else dice
        entry = (-rank, -index)
        if len(self._heap) >= self.limit and entry <= self._heap[0][:2]:
            return  # better than every kept one: not worth encoding
        item = (entry[0], entry[1], thumbnails(image, truth, prediction, self.colors, self.ignore_index))
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def by_index(self) -> dict[int, dict[str, str]]:
        """The kept thumbnails by image index."""
        return {-negative_index: thumbs for _, negative_index, thumbs in self._heap}


def curves_png(run_dir: Path | None) -> bytes | None:
    """The run's training curves: its curves.png, else drawn from its metrics.csv, else None."""
    if run_dir is None:
        return None
    if (run_dir / "curves.png").is_file():
        return (run_dir / "curves.png").read_bytes()
    if (run_dir / "metrics.csv").is_file():
        with tempfile.TemporaryDirectory() as scratch:
            try:
                plot_curves(run_dir / "metrics.csv", Path(scratch) / "curves.png")
            except (ValueError, OSError):
                return None  # an unreadable or empty history: the page says there are no curves
            return (Path(scratch) / "curves.png").read_bytes()
    return None


def _asset(name: str) -> str:
    return resources.files("masksmith.evaluation").joinpath("report_page", name).read_text(encoding="utf-8")


def _swatch(color: Sequence[int]) -> str:
    red, green, blue = (int(c) for c in color[:3])
    return f'<span class="swatch" style="background:rgb({red},{green},{blue})"></span>'


def _metrics_section(result: dict[str, Any]) -> str:
    rows = [f"<tr><td>{_e(label)}</td><td>{_fmt(result.get(key), 4)}</td></tr>" for key, label in SUMMARY if key in result]
    left_out = result.get("image_dice_left_out") or 0
    note = (f'<p class="note">{left_out} image(s) with every pixel ignored have no Dice and are left out of the '
            "per-image mean.</p>") if left_out else ""
    return ('<section id="metrics"><h2>Metrics</h2><p class="note">One confusion matrix over all pixels of the split; '
            "a class neither in the truth nor predicted is n/a and left out of the means.</p>"
            f'<table class="metrics"><tbody>{"".join(rows)}</tbody></table>{note}</section>')


def _bar(value: float | None, kind: str) -> str:
    if value is None:
        return f'<td class="bar {kind}">{_fmt(None)}</td>'
    return f'<td class="bar {kind}"><span class="fill" style="width:{120 * value:.1f}px"></span>{value:.3f}</td>'


def _per_class_section(result: dict[str, Any], colors: np.ndarray) -> str:
    rows = []
    for row in result["per_class"]:
        color = colors[row["index"]] if row["index"] < len(colors) else (255, 255, 255)
        rows.append(f'<tr><td>{row["index"]}</td><td class="name" title="{_e(row["name"])}">{_swatch(color)}'
                    f'{_e(row["name"])}</td>{_bar(row["iou"], "iou")}{_bar(row["dice"], "dice")}'
                    f'<td>{_fmt(row["precision"])}</td><td>{_fmt(row["recall"])}</td>'
                    f'<td>{row["support"]:,}</td><td>{row["predicted"]:,}</td></tr>')
    return ('<section id="per-class"><h2>Per class: IoU and Dice</h2><div class="scroll"><table class="classes">'
            '<thead><tr><th>#</th><th class="left">class</th><th class="left">IoU</th><th class="left">Dice</th>'
            "<th>precision</th><th>recall</th><th>truth px</th><th>predicted px</th></tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table></div></section>')


def _confusion_section(matrix: np.ndarray, names: Sequence[str]) -> str:
    k = len(names)
    support = matrix.sum(axis=1)
    small = k <= CONFUSION_TEXT_CLASSES
    head = "".join(f'<th title="{_e(name)}">{_e(name) if small else index}</th>' for index, name in enumerate(names))
    rows = []
    for truth in range(k):
        cells = []
        for guess in range(k):
            count = int(matrix[truth, guess])
            tip = f"truth {names[truth]} → predicted {names[guess]}: {count:,} px"
            if support[truth] == 0:
                cells.append(f'<td class="empty" title="{_e(tip)} (no truth pixels of this class)"></td>')
                continue
            share = count / support[truth]
            # Square-root shading: a 1 % confusion stays visible next to a 95 % diagonal.
            alpha = math.sqrt(share)
            text = f"{100 * share:.0f}%" if small and count else ""
            dark = " dark" if alpha > 0.6 else ""
            cells.append(f'<td class="cell{dark}" style="background:rgba(47,109,181,{alpha:.3f})" '
                         f'title="{_e(tip)} ({100 * share:.2f}% of the row)">{text}</td>')
        rows.append(f'<tr><th class="row" title="{_e(names[truth])}">{truth} {_e(names[truth])}</th>{"".join(cells)}</tr>')
    return ('<section id="confusion"><h2>Confusion matrix</h2><p class="note">Rows: truth, columns: prediction; each '
            "row is normalised by its truth pixels (shade on a square-root scale); hover a cell for its pixel count. "
            "Hatched rows: classes with no truth pixels.</p>"
            f'<div class="scroll"><table class="confusion{" small" if small else ""}"><thead><tr>'
            f'<th class="axis">truth \\ predicted</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            "</section>")


def _curves_section(png: bytes | None) -> str:
    if png is None:
        body = ('<p class="note">Not available: the model is not in a run folder with its training history '
                "(metrics.csv or curves.png next to model.msb).</p>")
    else:
        body = f'<img class="curves" alt="training curves" src="{_data_uri(png, "image/png")}">'
    return f'<section id="curves"><h2>Training curves</h2>{body}</section>'


def _value_cell(value: float | None) -> str:
    raw = "" if value is None else repr(float(value))
    return f'<td data-value="{raw}">{_fmt(value)}</td>'


def _images_section(per_image: list[dict[str, Any]], thumbs: dict[int, dict[str, str]]) -> str:
    # Worst first: ascending Dice, images without one at the end (as the page's sort puts them).
    order = sorted(range(len(per_image)), key=lambda i: (per_image[i]["dice"] is None, per_image[i]["dice"] or 0.0, i))
    rows = []
    for position, index in enumerate(order):
        row = per_image[index]
        pictures = thumbs.get(index)
        if pictures is None:
            images = '<td class="thumb na" colspan="3">no thumbnail</td>'
        else:
            images = "".join(f'<td class="thumb"><img{MASK_CLASS if key != "image" else ""} alt="{key}" '
                             f'src="{pictures[key]}"></td>' for key in ("image", "truth", "prediction"))
        rows.append(f'<tr data-order="{position}"><td data-value="{position + 1}">{position + 1}</td>'
                    f'<td class="name" data-value="{_e(row["name"])}" title="{_e(row["name"])}">{_e(row["name"])}</td>'
                    f'{_value_cell(row.get("dice"))}{_value_cell(row.get("iou"))}'
                    f'{_value_cell(row.get("pixel_accuracy"))}{images}</tr>')
    limited = len(thumbs) < len(per_image)
    note = (f" Thumbnails for the {len(thumbs)} lowest-Dice images only." if limited else "")
    return ('<section id="images"><h2>Per image</h2>'
            f'<p class="note">{len(per_image)} images, worst Dice first; click a column header to sort.{note} '
            "Dice and IoU: means over the image's non-background classes (1.0 when truth and prediction are both "
            "empty); pixel accuracy counts background too.</p>"
            '<div class="scroll"><table class="images" id="per-image"><thead><tr>'
            '<th data-sort="num"><button type="button">#</button></th>'
            '<th class="left" data-sort="text"><button type="button">image</button></th>'
            '<th data-sort="num" aria-sort="ascending"><button type="button">Dice</button></th>'
            '<th data-sort="num"><button type="button">IoU</button></th>'
            '<th data-sort="num"><button type="button">pixel accuracy</button></th>'
            "<th>photo</th><th>truth</th><th>prediction</th></tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table></div></section>')


def _failed_section(failed: list[dict[str, str]]) -> str:
    if not failed:
        return ""
    items = "".join(f"<li><code>{_e(row['name'])}</code>: {_e(row['reason'])}</li>" for row in failed)
    return (f'<section id="failed"><h2>Not scored</h2><p class="note">{len(failed)} pair(s) could not be read:</p>'
            f'<ul class="failed">{items}</ul></section>')


def render_report(result: dict[str, Any], *, colors: np.ndarray, thumbs: dict[int, dict[str, str]],
                  curves: bytes | None, model: str, data: str) -> str:
    """The report page as one HTML string."""
    names = [row["name"] for row in result["per_class"]]
    matrix = np.asarray(result["confusion_matrix"], dtype=np.int64)
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    split, images = result.get("split", "?"), result.get("images", len(result["per_image"]))
    sections = [_metrics_section(result), _per_class_section(result, colors), _confusion_section(matrix, names),
                _curves_section(curves), _images_section(result["per_image"], thumbs), _failed_section(result["failed"])]
    links = [("metrics", "metrics"), ("per-class", "per class"), ("confusion", "confusion matrix"),
             ("curves", "training curves"), ("images", "per image")] + ([("failed", "not scored")] if result["failed"] else [])
    nav = "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in links)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>masksmith evaluation: {_e(Path(model).name)}, {_e(split)} split</title>"
            f"<style>{_asset('report.css')}</style></head><body>"
            f'<header><h1>Evaluation: {_e(split)} split, {images} images, {len(names)} classes</h1>'
            f'<p class="facts">model <code>{_e(model)}</code> · data <code>{_e(data)}</code> · written {written}</p>'
            f"<nav>{nav}</nav></header><main>{''.join(sections)}</main>"
            f"<footer>masksmith {_e(__version__)} · evaluate --html</footer>"
            f"<script>{_asset('report.js')}</script></body></html>\n")


def write_html_report(out_dir: Path, result: dict[str, Any], *, colors: np.ndarray, thumbs: dict[int, dict[str, str]],
                      run_dir: Path | None, model: str, data: str) -> Path:
    """Write OUT/report.html (atomically) and return its path."""
    page = render_report(result, colors=colors, thumbs=thumbs, curves=curves_png(run_dir), model=model, data=data)
    path = out_dir / "report.html"
    write_text_atomic(path, page)
    return path
