"""Labelme JSON annotations → VOC-style class and instance masks, as Labelme's own ``labelme2voc.py``.

Conventions (the same as Labelme's, so its example outputs are reproduced pixel for pixel)
-----------------------------------------------------------------------------------------
* ``labels.txt``: one label per line. ``__ignore__`` → 255 (ignore), ``_background_`` → 0, every
  other label → 1, 2, ... in file order. With the usual file (``__ignore__`` first, then
  ``_background_``) a class index is the line position minus 1, as in Labelme. Blank lines are skipped;
  a file without ``_background_`` gets it added at index 0. Without a labels file the classes are
  ``_background_`` followed by every label found in the JSON files, sorted.
* Shapes are drawn in file order, each over the ones before, the way Labelme draws them with PIL:
  polygon, rectangle (two corners, both inclusive), circle (centre + a point on the circle),
  line / linestrip ``LINE_WIDTH`` pixels wide, point as a disc of radius ``POINT_SIZE``, and ``mask``
  (a base64 PNG placed at the box given by its two points, both corners inclusive). Polygons, lines
  and rectangles use our own copy of Pillow 9's fill rule, so the masks do not change with the
  installed Pillow (see "rasterization" below); circles and points use Pillow's ellipse.
* Instances: shapes with the same ``(label, group_id)`` are one instance; a shape without
  ``group_id`` is an instance of its own. Ids are given in order of first appearance, counting
  ``__ignore__`` shapes too, so ids can have gaps (Labelme numbers them the same way). In the instance
  mask, pixels whose class is ignore or background are 0, again as Labelme writes them.
* ``SegmentationObject`` is written for every file of a run when ``instances`` is on and at least
  one shape of the run has a ``group_id`` (a run is either a semantic or an instance dataset).
* The image is ``imageData`` (embedded base64) when present, else ``imagePath`` relative to the JSON's
  folder (``..`` allowed); if that file is missing, the same file name beside the JSON is tried, so a
  moved dataset still converts. Coordinates outside the image are clipped; shapes never crash a run.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from masksmith.data.convert import (
    IGNORE_INDEX,
    ConvertReport,
    clip_polygon,
    refuse_overwriting_sources,
    write_class_names,
    write_sample,
)
from masksmith.data.convert.nesting import parse_json
from masksmith.data.limits import open_image
from masksmith.data.images import read_image
from masksmith.errors import ConfigError, DataError, MasksmithError
from masksmith.visualize import default_colors

__all__ = ["LINE_WIDTH", "POINT_SIZE", "SHAPE_TYPES", "convert_labelme", "read_labels", "shape_to_mask"]

LINE_WIDTH = 10
POINT_SIZE = 5
IGNORE_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"
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
# More instances than this do not fit an 8-bit PNG next to the 255 the palette keeps for ignore.
_MAX_INSTANCE_ID = 254


@dataclass(frozen=True)
class _Shape:
    label: str
    group_id: Hashable | None
    shape_type: str
    points: np.ndarray  # [N, 2] float64 (x, y)
    mask: np.ndarray | None  # bool, only for shape_type "mask"


# --------------------------------------------------------------------------- labels


def read_labels(labels: str | Path | Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Parse a labels.txt (path) or a list of labels into (class names, label → class index)."""
    if isinstance(labels, (str, Path)):
        path = Path(labels)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise DataError(f"{path}: labels file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read labels file: {exc}") from None
        where = str(path)
    elif isinstance(labels, Sequence) and all(isinstance(name, str) for name in labels):
        lines, where = list(labels), "labels"
    else:
        raise ConfigError(f"labels must be a labels.txt path or a list of strings, got {labels!r}")
    names = [line.strip() for line in lines if line.strip()]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{where}: label {name!r} is listed twice")
        seen.add(name)
    classes = [BACKGROUND_LABEL] + [n for n in names if n not in (IGNORE_LABEL, BACKGROUND_LABEL)]
    if len(classes) < 2:
        raise DataError(f"{where}: no class labels (only {IGNORE_LABEL!r}/{BACKGROUND_LABEL!r} or empty)")
    if len(classes) > IGNORE_INDEX:
        raise DataError(f"{where}: {len(classes)} classes do not fit 8-bit masks (at most {IGNORE_INDEX}, "
                        f"because {IGNORE_INDEX} means ignore)")
    index = {name: i for i, name in enumerate(classes)}
    index[IGNORE_LABEL] = IGNORE_INDEX
    return classes, index


# --------------------------------------------------------------------------- reading a Labelme file


def _fail(json_path: Path, message: str) -> DataError:
    return DataError(f"{json_path}: {message}")


def _load_json(json_path: Path) -> dict[str, Any]:
    """Parse a Labelme JSON file and check that it is an annotation (a dict with a 'shapes' list)."""
    try:
        raw = json_path.read_bytes()
    except OSError as exc:
        raise _fail(json_path, f"cannot read file: {exc.strerror or exc}") from None
    if not raw.strip():
        raise _fail(json_path, "file is empty")
    try:
        data = parse_json(raw.decode("utf-8-sig"), str(json_path))
    except UnicodeDecodeError:
        raise _fail(json_path, "not a text (UTF-8) file") from None
    except json.JSONDecodeError as exc:
        raise _fail(json_path, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        got = "no 'shapes' list" if isinstance(data, dict) else f"top level is a {type(data).__name__}"
        raise _fail(json_path, f"not a Labelme annotation ({got})")
    return data


def _number(value: Any) -> float | None:
    # bool is an int in Python, but true/false as a coordinate is a broken file, not 1/0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _parse_shape(json_path: Path, number: int, shape: Any) -> _Shape:
    """Validate one entry of 'shapes' and return it normalized."""
    where = f"shape {number}"
    if not isinstance(shape, dict):
        raise _fail(json_path, f"{where} is not an object")
    label = shape.get("label")
    if not isinstance(label, str):
        raise _fail(json_path, f"{where} has no text 'label'")
    where = f"shape {number} ({label!r})"
    shape_type = shape.get("shape_type") or "polygon"  # Labelme's default, and old files omit it
    if not isinstance(shape_type, str) or shape_type not in SHAPE_TYPES:
        raise _fail(json_path, f"{where} has unknown shape_type {shape_type!r} "
                               f"(known: {', '.join(SHAPE_TYPES)})")
    group_id = shape.get("group_id")
    if group_id is not None and not isinstance(group_id, (int, float, str)):
        raise _fail(json_path, f"{where} has a group_id that is not a number or text: {group_id!r}")
    points = shape.get("points")
    if not isinstance(points, list):
        raise _fail(json_path, f"{where} has no 'points' list")
    coords = []
    for point in points:
        xy = [_number(v) for v in point] if isinstance(point, (list, tuple)) and len(point) == 2 else [None]
        if None in xy:
            shown = json.dumps(point, default=repr)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise _fail(json_path, f"{where} has a point that is not two finite numbers: {shown}")
        coords.append(xy)
    low, high = SHAPE_TYPES[shape_type]
    if len(coords) < low or (high is not None and len(coords) > high):
        needs = f"exactly {low}" if low == high else f"at least {low}"
        raise _fail(json_path, f"{where}: a {shape_type} needs {needs} points, got {len(coords)}")
    mask = _decode_shape_mask(json_path, where, shape.get("mask")) if shape_type == "mask" else None
    return _Shape(label, group_id, shape_type, np.asarray(coords, dtype=np.float64).reshape(-1, 2), mask)


def _decode_b64_image(text: Any) -> tuple[Image.Image, bytes]:
    """Decode a base64-encoded image file into a loaded PIL image and its bytes (ValueError when broken)."""
    if not isinstance(text, str):
        raise ValueError("it is not a base64 text")  # noqa: TRY004 - callers report every bad value alike
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # Some writers wrap the text in lines; accept whitespace, nothing else.
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"broken base64 ({exc})") from None
    try:
        with open_image(io.BytesIO(raw), "embedded image", where="imageData") as image:  # bombs refused first
            image.load()
    except UnidentifiedImageError:
        raise ValueError("decoded bytes are not an image (unknown format)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for undecodable data
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"decoded bytes are not an image ({reason})") from None
    return image, raw


def _decode_shape_mask(json_path: Path, where: str, text: Any) -> np.ndarray:
    try:
        image, _ = _decode_b64_image(text)
    except ValueError as exc:
        raise _fail(json_path, f"{where}: bad 'mask': {exc}") from None
    if image.mode in ("1", "L", "P", "I", "I;16", "F"):
        return np.asarray(image) != 0
    # Any colour channel set counts; alpha alone does not mark a pixel.
    return np.asarray(image.convert("RGB")).any(axis=2)


def _load_image(json_path: Path, data: dict[str, Any]) -> tuple[np.ndarray, bytes | Path]:
    """The annotated image as HxWx3 uint8, and its source (bytes or file) for JPEGImages."""
    image_data = data.get("imageData")
    if image_data:  # embedded data wins: it is what Labelme shows and annotates
        try:
            image, raw = _decode_b64_image(image_data)
        except ValueError as exc:
            raise _fail(json_path, f"bad imageData: {exc}") from None
        image = ImageOps.exif_transpose(image)
        return np.ascontiguousarray(np.asarray(image.convert("RGB")), dtype=np.uint8), raw
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path.strip():
        raise _fail(json_path, "has neither imageData nor an imagePath")
    path = _find_image(json_path, image_path)
    try:
        return read_image(path, channels=3), path
    except MasksmithError as exc:
        raise _fail(json_path, f"imagePath {image_path!r}: {exc}") from None


def _find_image(json_path: Path, image_path: str) -> Path:
    # Labelme on Windows writes backslashes; the file name beside the JSON covers a moved dataset.
    relative = Path(image_path.replace("\\", "/"))
    candidates = [json_path.parent / relative, json_path.parent / relative.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise _fail(json_path, f"image not found: imagePath {image_path!r} (looked for {candidates[0]}"
                           + (f" and {candidates[1]})" if candidates[1] != candidates[0] else ")"))


# --------------------------------------------------------------------------- rasterization
#
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


def _masks(json_path: Path, size: tuple[int, int], shapes: list[_Shape],
           label_index: dict[str, int], labels_source: str) -> tuple[np.ndarray, np.ndarray]:
    """Class mask and instance mask of one image: shapes drawn in file order, later over earlier."""
    classes = np.zeros(size, dtype=np.uint8)
    objects = np.zeros(size, dtype=np.int32)
    instances: dict[tuple[str, Hashable], int] = {}
    for number, shape in enumerate(shapes):
        if shape.label not in label_index:
            raise _fail(json_path, f"shape {number} has label {shape.label!r}, which is not in {labels_source}")
        # A shape without group_id is its own instance: key it by its position, which no group_id equals.
        key = (shape.label, ("group", shape.group_id) if shape.group_id is not None else ("shape", number))
        instance = instances.setdefault(key, len(instances) + 1)
        try:
            region = shape_to_mask(size, shape.shape_type, shape.points, shape.mask)
        except ValueError as exc:
            raise _fail(json_path, f"shape {number} ({shape.label!r}): {exc}") from None
        classes[region] = label_index[shape.label]
        objects[region] = instance
    # Labelme's instance masks are 0 wherever the class is ignore; background is no instance either.
    objects[(classes == IGNORE_INDEX) | (classes == 0)] = 0
    if objects.max(initial=0) > _MAX_INSTANCE_ID:
        raise _fail(json_path, f"{int(objects.max())} instances do not fit an 8-bit mask (at most {_MAX_INSTANCE_ID})")
    return classes, objects.astype(np.uint8)


def _read_annotation(json_path: Path) -> tuple[dict[str, Any], list[_Shape]]:
    data = _load_json(json_path)
    shapes = [_parse_shape(json_path, number, shape) for number, shape in enumerate(data["shapes"])]
    return data, shapes


def _scan(json_paths: list[Path]) -> tuple[set[str], bool, list[Path]]:
    """Labels used, whether any shape has a group_id, and the image files read; bad files are reported later."""
    labels: set[str] = set()
    grouped = False
    images: list[Path] = []
    for path in json_paths:
        try:
            data = _load_json(path)
        except DataError:
            continue
        image_path = data.get("imagePath")
        if not data.get("imageData") and isinstance(image_path, str) and image_path.strip():
            try:
                images.append(_find_image(path, image_path))
            except DataError:
                pass  # the conversion itself reports the missing image
        for shape in data["shapes"]:
            if isinstance(shape, dict):
                if isinstance(shape.get("label"), str):
                    labels.add(shape["label"])
                grouped |= shape.get("group_id") is not None
    return labels, grouped, images


def convert_labelme(
    src_dir: str | Path,
    out_dir: str | Path,
    labels: str | Path | list[str] | None = None,
    *,
    instances: bool = True,
    visualize: bool = True,
    progress: bool = True,
) -> ConvertReport:
    """Convert every Labelme ``*.json`` in `src_dir` into a VOC-style dataset in `out_dir`."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise DataError(f"{src_dir}: not a folder")
    json_paths = sorted(path for path in src_dir.glob("*.json") if path.is_file())
    if not json_paths:
        raise DataError(f"{src_dir}: no Labelme *.json files in this folder")
    found, grouped, images = _scan(json_paths)
    if labels is None:
        classes = [BACKGROUND_LABEL] + sorted(found - {IGNORE_LABEL, BACKGROUND_LABEL})
        if len(classes) > IGNORE_INDEX:
            raise DataError(f"{src_dir}: {len(classes)} labels do not fit 8-bit masks (at most {IGNORE_INDEX})")
        label_index = {name: i for i, name in enumerate(classes)} | {IGNORE_LABEL: IGNORE_INDEX}
        labels_source = "the labels list"
    else:
        classes, label_index = read_labels(labels)
        labels_source = str(labels) if isinstance(labels, (str, Path)) else "the labels list"
    colors = default_colors(len(classes))
    write_objects = instances and grouped

    inputs = json_paths + images + ([Path(labels)] if isinstance(labels, (str, Path)) else [])
    refuse_overwriting_sources(out_dir, src_dir, inputs, [p.stem for p in json_paths],
                               visualize=visualize, objects=write_objects)
    report = ConvertReport(class_names=list(classes))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_class_names(out_dir, classes)
    for json_path in tqdm(json_paths, desc="converting labelme", unit="file", disable=not progress):
        try:
            data, shapes = _read_annotation(json_path)
            image, source = _load_image(json_path, data)
            height, width = image.shape[:2]
            for key, actual in (("imageHeight", height), ("imageWidth", width)):
                stated = data.get(key)
                if stated is not None and stated != actual:
                    raise _fail(json_path, f"{key} is {stated!r} but the image is {width}x{height} (WxH)")
            class_mask, object_mask = _masks(json_path, (height, width), shapes, label_index, labels_source)
            write_sample(out_dir, json_path.stem, image, source, class_mask, colors,
                         object_mask if write_objects else None, visualize)
        except MasksmithError as exc:
            report.failed.append((json_path, str(exc)))
            continue
        report.written.append(json_path.stem)
    return report
