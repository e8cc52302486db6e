"""Polygons in pixel coordinates → a bool mask with pycocotools, the rasterizer COCO's evaluation uses.

COCO, CVAT and Label Studio polygons are all filled here. CVAT's own "Segmentation mask" export fills
polygons and boxes with the same pycocotools calls (through datumaro), so CVAT masks come out as CVAT
writes them. The rule is half-open: a polygon from x=2 to x=6 covers columns 2..5 (PIL, and so Labelme,
also fills the last column and row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from masksmith.data.convert.common import clip_polygon

__all__ = ["fill_polygons"]


def fill_polygons(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """The union of [N, 2] (x, y) polygons (N >= 3, finite) as an HxW bool mask; parts outside are clipped."""
    # pycocotools scales coordinates by 5 into C ints, which overflow far outside the image;
    # clipping to a box around the image keeps every in-image pixel as it was.
    pad = max(height, width) + 16
    box = (-pad, -pad, width + pad, height + pad)
    flat = []
    for points in polygons:
        if (points < box[:2]).any() or (points > box[2:]).any():
            points = clip_polygon(points, box)
        if len(points) >= 3:
            flat.append(np.asarray(points, dtype=np.float64).ravel().tolist())
    if not flat:  # everything lies far outside the image
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(flat, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
