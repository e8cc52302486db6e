"""The region assist: a click takes the model's connected region of the class it predicted at that point.

It uses the prediction the page already has the model make (no extra weights, no download), so it is
as good as the model is at the region's outline and costs one flood fill: a person clicks a shoe the
model found and gets its outline, then corrects the edges by brush. 4-connected, as the page's own fill.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import cv2
import numpy as np


def connected_region(mask: np.ndarray, x: int, y: int) -> tuple[int, tuple[int, int, int, int], np.ndarray]:
    """(class at (x, y), box (x, y, width, height), the box's HxW bool region): the 4-connected pixels of
    that class reachable from (x, y)."""
    height, width = mask.shape
    flood = np.zeros((height + 2, width + 2), np.uint8)  # OpenCV's flood mask has a one-pixel border
    # Exact equality (both differences 0) on the class indices; only the flood mask is written (OpenCV still
    # wants a writable image: a copy).
    _, _, _, (left, top, box_w, box_h) = cv2.floodFill(
        np.array(mask, np.uint8), flood, (int(x), int(y)), 0, 0, 0, 4 | cv2.FLOODFILL_MASK_ONLY | (1 << 8))
    region = flood[1 + top:1 + top + box_h, 1 + left:1 + left + box_w].astype(bool)
    return int(mask[y, x]), (int(left), int(top), int(box_w), int(box_h)), region


def region_document(mask: np.ndarray, x: int, y: int) -> dict[str, Any]:
    """The assist's answer: the class, the box and its region as base64 of zlib'd 0/1 bytes, row by row."""
    cls, (left, top, box_w, box_h), region = connected_region(mask, x, y)
    packed = zlib.compress(np.ascontiguousarray(region, np.uint8).tobytes(), 6)
    return {"class": cls, "x": left, "y": top, "width": box_w, "height": box_h, "pixels": int(region.sum()),
            "region": base64.b64encode(packed).decode("ascii")}
