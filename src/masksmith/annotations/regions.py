"""A class-index mask as connected regions, and as outlines painted in an order that reproduces it.

Regions are 4-connected components of one class. That choice makes the outlines nest cleanly: two
4-connected regions of different classes can never cross each other (8-connected ones can, through
a diagonal), so a region lies either wholly inside a hole of another one or wholly outside its outline.

An outline is the region's outer boundary traced by OpenCV (pixel centres, integer coordinates), filled
with everything it encloses. Painting outlines from the largest enclosed area to the smallest, each
over the ones before (Labelme's "later shapes over earlier ones"), gives back the mask: a region's
holes are painted afterwards by the regions inside them, background included. Background regions are
written only where they sit inside another region's outline; elsewhere background is the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np

from masksmith.data.convert.labelme_raster import shape_to_mask
from masksmith.errors import ConfigError

__all__ = ["MIN_OUTLINE_IOU", "Outline", "Region", "check_tolerance", "fill_order", "paint", "regions",
           "worst_class_iou"]

# Small regions are mostly boundary: cutting the corners of a 3x3 blob loses half of it. An outline is
# simplified only as far as it still paints its region with this IoU, so small regions keep their corners.
MIN_OUTLINE_IOU = 0.99


@dataclass(frozen=True)
class Region:
    """One 4-connected region of a class: its bounding box (x, y, width, height) and its pixels there."""

    class_index: int
    box: tuple[int, int, int, int]
    area: int
    pixels: np.ndarray  # bool, height x width: the region inside its box

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The region as an HxW bool mask of the whole image."""
        x, y, w, h = self.box
        out = np.zeros(shape, dtype=bool)
        out[y:y + h, x:x + w] = self.pixels
        return out


@dataclass(frozen=True)
class Outline:
    """A shape to paint: 'polygon' (>= 3 points) or 'rectangle' (2 corners, inclusive), points as (x, y)."""

    class_index: int
    shape_type: str
    points: list[list[int]]


def check_tolerance(tolerance: float) -> float:
    """The polygon tolerance as a float: a finite number of pixels >= 0 (ConfigError otherwise)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise ConfigError(f"polygon tolerance must be a number of pixels, got {tolerance!r}")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(f"polygon tolerance must be a finite number of pixels >= 0, got {tolerance}")
    return float(tolerance)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype.kind not in "ui":
        raise ConfigError(f"expected an HxW integer class-index mask, got shape {mask.shape} of {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ConfigError(f"class indices must lie in 0..255, got {int(mask.min())}..{int(mask.max())}")
    return mask.astype(np.uint8, copy=False)


def _components(mask: np.ndarray, class_index: int) -> tuple[np.ndarray, list[Region]]:
    """The label image and the 4-connected regions of one class."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask == class_index).view(np.uint8),
                                                                connectivity=4)
    found = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        found.append(Region(class_index, (x, y, w, h), area, labels[y:y + h, x:x + w] == label))
    return labels, found


def regions(mask: np.ndarray, *, background: bool = False) -> Iterator[Region]:
    """Every 4-connected region of every class present (class 0 only with background=True)."""
    mask = _check_mask(mask)
    for class_index in np.unique(mask).tolist():
        if class_index != 0 or background:
            yield from _components(mask, class_index)[1]


def _trace(region: Region) -> np.ndarray:
    """The region's outer boundary, [N, 1, 2] int32 image coordinates (straight runs compressed)."""
    x, y, w, h = region.box
    # One pixel of padding: OpenCV ignores a contour's pixels on the image border.
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = region.pixels
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # A 4-connected region is also 8-connected: exactly one outer contour.
    return contours[0] + np.array([x - 1, y - 1], dtype=np.int32)


def _painted(points: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """What an outline's points paint inside `box`, rasterized as the Labelme converter does it."""
    x, y, w, h = box
    local = points.reshape(-1, 2) - np.array([x, y])
    if len(local) < 3:
        return shape_to_mask((h, w), "rectangle", [local.min(axis=0), local.max(axis=0)])
    return shape_to_mask((h, w), "polygon", local)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _simplify(contour: np.ndarray, tolerance: float, region: Region, min_iou: float) -> np.ndarray:
    """Douglas-Peucker at `tolerance`, halved while the outline would paint its region with IoU < min_iou
    or be too thin for a polygon (< 3 points); the exact contour when no tolerance >= 0.5 px does."""
    # Simplified points are a subset of the contour's, so the outline never leaves the region's box.
    exact: np.ndarray | None = None
    # Beyond the region's own size a tolerance cannot simplify more; capping it bounds the halving.
    epsilon = min(tolerance, float(max(region.box[2], region.box[3])))
    while epsilon >= 0.5:
        simplified = cv2.approxPolyDP(contour, epsilon, True)
        if len(simplified) == len(contour):
            return contour
        if len(simplified) >= 3:
            if exact is None:
                exact = _painted(contour, region.box)
            if _iou(_painted(simplified, region.box), exact) >= min_iou:
                return simplified
        epsilon /= 2
    return contour


def _outline(region: Region, contour: np.ndarray, tolerance: float, min_iou: float) -> Outline:
    if tolerance > 0:
        contour = _simplify(contour, tolerance, region, min_iou)
    points = contour.reshape(-1, 2)
    if len(points) >= 3:
        return Outline(region.class_index, "polygon", points.tolist())
    # One pixel or a straight run one pixel wide: its box is exactly the region.
    x, y, w, h = region.box
    return Outline(region.class_index, "rectangle", [[x, y], [x + w - 1, y + h - 1]])


def fill_order(mask: np.ndarray, tolerance: float = 0.0, min_iou: float = MIN_OUTLINE_IOU) -> list[Outline]:
    """Outlines that, painted in list order (later over earlier) on background 0, give back `mask`.

    Exact with tolerance 0. A tolerance > 0 (pixels) simplifies each outline with Douglas-Peucker, as
    far as the outline still paints what it encloses with an IoU of at least `min_iou`, and every class of
    the painted mask keeps an IoU of at least `min_iou` with its class in `mask`.
    """
    mask = _check_mask(mask)
    tolerance = check_tolerance(tolerance)
    traced: list[tuple[float, int, Region, np.ndarray]] = []
    enclosed = np.zeros(mask.shape, dtype=np.uint8)
    for region in regions(mask):
        contour = _trace(region)
        traced.append((cv2.contourArea(contour), region.area, region, contour))
        cv2.drawContours(enclosed, [contour], -1, 1, thickness=cv2.FILLED)
    if (mask == 0).any() and enclosed.any():
        labels, background = _components(mask, 0)
        # A background region needs an outline only where some other region's outline covers it (a hole).
        covered = np.bincount(labels[enclosed.view(bool)], minlength=len(background) + 1)
        for label, region in enumerate(background, start=1):
            if covered[label]:
                contour = _trace(region)
                traced.append((cv2.contourArea(contour), region.area, region, contour))
    # A region inside another's hole has a strictly smaller outline area, so it is painted later.
    traced.sort(key=lambda item: (-item[0], -item[1]))
    outlines = [_outline(region, contour, tolerance, min_iou) for _, _, region, contour in traced]
    # Each outline keeps its own IoU, but what a large region loses goes to its neighbours: a small class
    # beside large ones (often the unlabelled background) could lose more than min_iou. Whole classes are
    # checked too, the tolerance halved until every class paints back with IoU >= min_iou (else exact).
    while tolerance > 0 and worst_class_iou(paint(mask.shape, outlines), mask) < min_iou:
        tolerance = tolerance / 2 if tolerance >= 1.0 else 0.0
        outlines = [_outline(region, contour, tolerance, min_iou) for _, _, region, contour in traced]
    return outlines


def paint(shape: tuple[int, int], outlines: Sequence[Outline]) -> np.ndarray:
    """What `outlines` paint in list order, later over earlier, on background 0, as `convert labelme` does."""
    out = np.zeros(shape, dtype=np.uint8)
    for outline in outlines:
        out[shape_to_mask(shape, outline.shape_type, outline.points)] = outline.class_index
    return out


def worst_class_iou(painted: np.ndarray, mask: np.ndarray) -> float:
    """The lowest IoU between `painted` and `mask` over the classes in either (1.0 when they agree)."""
    different = painted != mask
    if not different.any():
        return 1.0
    worst = 1.0
    for cls in np.unique(np.concatenate([painted[different], mask[different]])).tolist():
        a, b = painted == cls, mask == cls
        worst = min(worst, float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum()))
    return worst
