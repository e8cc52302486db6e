"""Labelme shapes → pixels: each shape type rasterized exactly as Labelme's own export draws it.

Shapes are drawn by :func:`shape_to_mask` into a bool mask; the folder conversion in
:mod:`masksmith.data.convert.labelme` paints them in file order, later over earlier.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from masksmith.data.convert.common import clip_polygon
from masksmith.errors import ConfigError

__all__ = ["LINE_WIDTH", "POINT_SIZE", "SHAPE_TYPES", "shape_to_mask"]

LINE_WIDTH = 10
POINT_SIZE = 5
# Number of points each shape type takes: (minimum, maximum); None = no maximum.
SHAPE_TYPES: dict[str, tuple[int, int | None]] = {
    "polygon": (3, None),
    "rectangle": (2, 2),
    "circle": (2, 2),
    "line": (2, 2),
    "linestrip": (2, None),
    "point": (1, 1),
    "mask": (2, 2),
}

# Labelme draws with PIL's ImageDraw, and Pillow has changed its polygon fill over the years, so
# the same JSON gives slightly different masks under different Pillow versions: the Pillow 13 here
# is 1 pixel off Labelme's reference outputs, and differs from the rule below on about a third of
# small random polygons (by up to 12 pixels). The reference outputs were made with the rule of
# Pillow 9 (it joins corners, but without the odd-crossing check added later); the scanline fill
# below is our own NumPy version of that rule, so polygons, rectangles and lines come out the same
# whatever Pillow is installed, and match Labelme's outputs pixel for pixel:
# * vertices are truncated to ints (C's (int) cast, toward zero);
# * each row meets every non-horizontal edge at a float32 x; crossings are sorted and paired left to
#   right, and each pair fills round-half-up(left) .. round-half-down(right); horizontal edges are
#   filled as they are;
# * on a row holding an edge's end: the lower end counts twice (except on the last row) so that
#   two edges meeting there pair up, and where two edges sloping the same way meet at a whole x,
#   the corner is widened to the neighbouring row's extent ("connect discontiguous corners");
# * an outline in the fill colour is not drawn (PIL skips it), so the fill is all of it.
# Circles and points use the installed Pillow's ellipse (Labelme's reference has none to match).


def _round_up(value: np.ndarray) -> np.ndarray:
    """PIL's ROUND_UP: halves away from zero, the positive branch in the input's precision."""
    value = np.asarray(value)
    positive = np.floor(value + value.dtype.type(0.5))
    negative = -np.floor(np.abs(value).astype(np.float64) + 0.5)
    return np.where(value >= 0, positive, negative).astype(np.int64)


def _round_down(value: np.ndarray) -> np.ndarray:
    """PIL's ROUND_DOWN: halves toward zero, the positive branch in the input's precision."""
    value = np.asarray(value)
    positive = np.ceil(value - value.dtype.type(0.5))
    negative = -np.ceil(np.abs(value).astype(np.float64) - 0.5)
    return np.where(value >= 0, positive, negative).astype(np.int64)


def _fill_spans(out: np.ndarray, rows: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
    """Set out[row, left..right] (inclusive; nothing when right < left), clipped to the image."""
    width = out.shape[1]
    rows, left, right = (np.asarray(a, dtype=np.int64) for a in (rows, left, right))
    keep = (rows >= 0) & (rows < out.shape[0]) & (left < width) & (right >= 0)
    rows, left, right = rows[keep], np.maximum(left[keep], 0), np.minimum(right[keep], width - 1)
    for row, start, stop in zip(rows.tolist(), left.tolist(), right.tolist()):
        if start <= stop:
            out[row, start:stop + 1] = True


def _pair_spans(rows: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort crossings per row and pair them left to right: (rows, first pixel, last pixel)."""
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64)
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    left = np.flatnonzero(rank % 2 == 0)
    left = left[left + 1 < len(rows)]
    left = left[rows[left + 1] == rows[left]]  # an odd crossing left at a row's end fills nothing
    return rows[left], _round_up(xs[left]), _round_down(xs[left + 1])


class _Edges:
    """Non-horizontal polygon edges as arrays, in drawing order (the order matters at corners)."""

    def __init__(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> None:
        self.x0, self.y0 = x0, y0
        self.ymin, self.ymax = np.minimum(y0, y1), np.maximum(y0, y1)
        self.slope = (x1 - x0).astype(np.float32) / (y1 - y0).astype(np.float32)

    def x_at(self, i: int, y: int) -> np.float32:
        """Where edge i crosses row y, in float32 exactly as the C code computes it."""
        return np.float32(y - self.y0[i]) * self.slope[i] + np.float32(self.x0[i])


def _corner_row(edges: _Edges, y: int, last_row: int) -> list[np.float32]:
    """Crossings of a row that holds edge ends, with Pillow 9's corner rules (see above)."""
    inside = np.flatnonzero((edges.ymin <= y) & (y <= edges.ymax)).tolist()
    crossings: dict[int, np.float32] = {}  # position -> x; a corner fix writes at an edge's index
    count = 0
    one = np.float32(1)
    for i in inside:
        x = edges.x_at(i, y)
        crossings[count] = x
        count += 1
        slope = edges.slope[i]
        if y == edges.ymax[i] and y < last_row:
            crossings[count] = x
            count += 1
        elif slope != 0 and float(x).is_integer():
            for k in inside:
                if k >= i:
                    break
                other = edges.slope[k]
                if (slope > 0 and other <= 0) or (slope < 0 and other >= 0):
                    continue
                meets = (y == edges.ymin[i] and y == edges.ymin[k]) or (y == edges.ymax[i] and y == edges.ymax[k])
                if meets and x == edges.x_at(k, y):
                    step = -1 if y == last_row else 1
                    a, b = edges.x_at(i, y + step), edges.x_at(k, y + step)
                    if y == edges.ymax[i]:
                        value = max(a, b) + one if slope > 0 else min(a, b) - one
                    else:
                        value = min(a, b) if slope > 0 else max(a, b) + one
                    # Pillow stores this at the other edge's index, not at its crossing's position.
                    crossings[k] = np.float32(value)
                    break
    return [crossings[p] for p in range(count)]


def _fill_polygon(out: np.ndarray, vertices: np.ndarray) -> None:
    """Fill the polygon through integer vertices [N, 2] (closed automatically) into `out`."""
    height = out.shape[0]
    if len(vertices) == 0:
        return
    points = vertices if np.array_equal(vertices[-1], vertices[0]) else np.vstack([vertices, vertices[:1]])
    x0, y0, x1, y1 = points[:-1, 0], points[:-1, 1], points[1:, 0], points[1:, 1]
    if len(x0) == 0:  # a lone vertex makes no edge, so PIL draws nothing
        return
    top = max(0, min(height - 1, int(min(y0.min(), y1.min()))))
    last_row = min(height, max(0, int(max(y0.max(), y1.max()))))
    flat = y0 == y1
    _fill_spans(out, y0[flat], np.minimum(x0, x1)[flat], np.maximum(x0, x1)[flat])
    if flat.all():
        return
    edges = _Edges(x0[~flat], y0[~flat], x1[~flat], y1[~flat])
    # Rows without an edge end: every crossing is a plain edge/row intersection, done in bulk.
    first, last = np.maximum(edges.ymin, top), np.minimum(edges.ymax, last_row)
    counts = np.clip(last - first + 1, 0, None)
    edge = np.repeat(np.arange(len(counts)), counts)
    rows = first[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts)
    xs = (rows - edges.y0[edge]).astype(np.float32) * edges.slope[edge] + edges.x0[edge].astype(np.float32)
    corner_rows = np.unique(np.concatenate([edges.ymin, edges.ymax]))
    corner_rows = corner_rows[(corner_rows >= top) & (corner_rows <= last_row)]
    plain = ~np.isin(rows, corner_rows)
    _fill_spans(out, *_pair_spans(rows[plain], xs[plain]))
    # Rows holding edge ends follow the corner rules, one row at a time.
    for y in corner_rows.tolist():
        crossings = np.sort(np.asarray(_corner_row(edges, y, last_row), dtype=np.float32))
        pairs = len(crossings) // 2 * 2
        _fill_spans(out, np.full(pairs // 2, y), _round_up(crossings[0:pairs:2]), _round_down(crossings[1:pairs:2]))


def _truncate(points: np.ndarray) -> np.ndarray:
    """C's (int) cast: toward zero."""
    return np.trunc(points).astype(np.int64)


def _wide_line(out: np.ndarray, a: np.ndarray, b: np.ndarray, width: int) -> None:
    """A line `width` pixels wide from a to b (integer points): a 4-sided polygon with flat ends."""
    (x0, y0), (x1, y1) = a.tolist(), b.tolist()
    dx, dy = x1 - x0, y1 - y0
    if dx == 0 and dy == 0:
        if 0 <= y0 < out.shape[0] and 0 <= x0 < out.shape[1]:
            out[y0, x0] = True
        return
    length = math.hypot(dx, dy)
    half = np.float64((width - 1) / 2.0)
    ratio_max = int(_round_up(half)) / length
    ratio_min = int(_round_down(half)) / length
    dxmin, dxmax, dymin, dymax = (int(_round_down(np.float64(v))) for v in
                                  (ratio_min * dy, ratio_max * dy, ratio_min * dx, ratio_max * dx))
    corners = np.array([[x0 - dxmin, y0 + dymax], [x1 - dxmin, y1 + dymax],
                        [x1 + dxmax, y1 - dymin], [x0 + dxmax, y0 - dymin]], dtype=np.int64)
    _fill_polygon(out, corners)


def _clip_segment(a: np.ndarray, b: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
    """Liang–Barsky clip of segment a→b to a box; None when it misses the box."""
    t0, t1 = 0.0, 1.0
    a, b = np.clip(a, -1e12, 1e12), np.clip(b, -1e12, 1e12)  # keeps b - a finite (see clip_polygon)
    d = b - a
    for p, q in ((-d[0], a[0] - box[0]), (d[0], box[2] - a[0]), (-d[1], a[1] - box[1]), (d[1], box[3] - a[1])):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
    if t0 > t1:
        return None
    return np.stack([a + t0 * d, a + t1 * d])


def _disc(out: np.ndarray, cx: float, cy: float, r: float, box: tuple[float, float, float, float]) -> None:
    """A filled circle: Pillow's ellipse in the box (cx±r, cy±r) as Labelme draws it, arithmetic when huge."""
    height, width = out.shape
    if box[0] <= cx - r and cx + r <= box[2] and box[1] <= cy - r and cy + r <= box[3]:
        image = Image.new("L", (width, height))
        ImageDraw.Draw(image).ellipse([cx - r, cy - r, cx + r, cy + r], fill=1, outline=1)
        out |= np.asarray(image, dtype=bool)
        return
    # Pillow takes minutes on a circle of radius 1e6 and silently draws nothing past 2**31. The
    # visible part of a huge circle is the pixels within r of the centre; hypot cannot overflow.
    ys, xs = np.ogrid[:height, :width]
    out |= np.hypot(xs - cx, ys - cy) <= r


def shape_to_mask(
    size: tuple[int, int],
    shape_type: str,
    points: Sequence[Sequence[float]] | np.ndarray,
    mask: np.ndarray | None = None,
    line_width: int = LINE_WIDTH,
    point_size: int = POINT_SIZE,
) -> np.ndarray:
    """Rasterize one Labelme shape into an HxW bool mask, as Labelme does; coordinates outside are clipped."""
    height, width = size
    if shape_type not in SHAPE_TYPES:
        raise ConfigError(f"unknown shape_type {shape_type!r} (known: {', '.join(SHAPE_TYPES)})")
    if line_width < 2:
        raise ConfigError(f"line_width must be at least 2, got {line_width}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(size, dtype=bool)
    if shape_type == "mask":
        _place_mask(out, pts, mask)
        return out
    # Geometry far outside the image is clipped to a box around it first: C ints overflow past
    # 2**31 and float32 scanlines lose precision on huge values. The margin keeps the cut edges,
    # and a wide line's flat end caps, well away from the image, so in-image pixels are unchanged.
    pad = max(height, width) + 4 * (line_width + point_size)
    box = (-pad, -pad, width + pad, height + pad)
    inside = bool(np.all((pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])))
    if shape_type in ("circle", "point"):
        cx, cy = pts[0]
        r = float(math.hypot(*(pts[1] - pts[0]))) if shape_type == "circle" else float(point_size)
        _disc(out, cx, cy, r, box)
    elif shape_type == "rectangle":
        # Clamping an axis-aligned box is exact; both corners are inclusive.
        (xa, ya), (xb, yb) = _truncate(np.clip(pts, box[:2], box[2:])).tolist()
        top, bottom = max(min(ya, yb), 0), min(max(ya, yb), height - 1)
        left, right = max(min(xa, xb), 0), min(max(xa, xb), width - 1)
        if top <= bottom and left <= right:
            out[top:bottom + 1, left:right + 1] = True
    elif shape_type in ("line", "linestrip"):
        # PIL draws a line strip one segment at a time, so clipping each segment draws the same.
        for a, b in itertools.pairwise(pts):
            segment = np.stack([a, b]) if inside else _clip_segment(a, b, box)
            if segment is not None:
                ends = _truncate(segment)
                _wide_line(out, ends[0], ends[1], line_width)
    else:  # polygon
        if not inside:
            pts = clip_polygon(pts, box)
        _fill_polygon(out, _truncate(pts))
    return out


def _place_mask(out: np.ndarray, pts: np.ndarray, mask: np.ndarray | None) -> None:
    """A 'mask' shape: its bitmap with its corners at the two points (inclusive), clipped to the image."""
    if mask is None:
        raise ConfigError("a 'mask' shape needs its bitmap")
    # Labelme truncates the corners to int; Python ints cannot overflow, numpy's could.
    x0, y0 = int(pts[0, 0]), int(pts[0, 1])
    x1, y1 = int(pts[1, 0]), int(pts[1, 1])
    if mask.shape != (y1 - y0 + 1, x1 - x0 + 1):
        raise ValueError(f"mask bitmap is {mask.shape[1]}x{mask.shape[0]} but its box "
                         f"({x0},{y0})-({x1},{y1}) is {x1 - x0 + 1}x{y1 - y0 + 1}")
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y1 + 1, out.shape[0]), min(x1 + 1, out.shape[1])
    if top < bottom and left < right:
        out[top:bottom, left:right] = mask[top - y0:bottom - y0, left - x0:right - x0]
