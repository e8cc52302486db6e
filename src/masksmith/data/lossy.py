"""Lossy (JPEG) masks: the shared thresholds, nearest-class snapping and its warning.

Class regions are flat (pixels close to their 4 neighbours) even after JPEG; compression artifacts are many
rare values along edges, close to a class value/color. Detection (detect.py) and decoding (masks.py) both
judge masks by these numbers.
"""

from __future__ import annotations

import warnings

import numpy as np

from masksmith.data.palette import color_text
from masksmith.errors import DataError

FLAT_TOLERANCE = 16  # per channel: JPEG noise inside a region stays below this; class edges jump higher
LEVEL_BIN = {"gray": 1, "color": 16}  # flat pixels are counted per bin (colors: 16x16x16 cubes)
LEVEL_MIN_PIXELS = 16  # flat pixels a bin needs to be a class in a lossy mask
LEVEL_MIN_SHARE = 0.002  # ... and this share of all flat pixels
LEVEL_OWN_SHARE = 0.05  # gray: a value this full is its own class even when close to a fuller one (0/1 masks)
MERGE_RADIUS = {"gray": 32, "color": 32}  # closer levels are one class rendered twice by the codec
NEAR = {"gray": 32, "color": 48}  # artifacts lie this close to a class value/color
ARTIFACT_MIN_DISTINCT = 16  # fewer unexpected values than this are real labels, not compression noise
ARTIFACT_NEAR_FRACTION = 0.9  # share of unexpected pixels that must lie near a class for "lossy"
FAR = {"gray": 64, "color": 96}  # in a lossy mask, a big region this far from every class is an unknown class
FAR_MIN_SHARE = 0.005


class LossyMaskWarning(UserWarning):
    """A mask saved lossily (JPEG) had pixels snapped to the nearest class value or color."""



def warn_snapped(where: str, reason: str, snapped: int, total: int, what: str) -> None:
    """Say how many pixels of a lossy mask were moved to the nearest class."""
    if snapped:
        share = 100.0 * snapped / max(total, 1)
        warnings.warn(
            f"{where}{reason}, {snapped} pixels ({share:.1f}%) snapped to the nearest class {what}",
            LossyMaskWarning,
            stacklevel=5,  # the caller of read_mask / decode_mask
        )


def nearest_center(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `points` the index of, and Euclidean distance to, the nearest row of `centers`."""
    nearest = np.zeros(len(points), np.int64)
    distance = np.zeros(len(points), np.float64)
    centers = centers.astype(np.float64)
    step = max(1, 2**20 // max(len(centers), 1))  # a JPEG holds ~1e5 distinct colors: bound the NxK matrix
    for start in range(0, len(points), step):
        chunk = points[start : start + step].astype(np.float64)
        squared = ((chunk[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        best = squared.argmin(axis=1)
        nearest[start : start + step] = best
        distance[start : start + step] = np.sqrt(squared[np.arange(len(chunk)), best])
    return nearest, distance


def looks_lossy(unknown_counts: np.ndarray, distance: np.ndarray, space: str) -> bool:
    """Many distinct unexpected values, nearly all close to a class: compression artifacts, not new labels."""
    if len(unknown_counts) < ARTIFACT_MIN_DISTINCT:
        return False
    near = unknown_counts[distance <= NEAR[space]].sum()
    return near >= ARTIFACT_NEAR_FRACTION * unknown_counts.sum()


def refuse_far_regions(where: str, points: np.ndarray, counts: np.ndarray, distance: np.ndarray,
                        total: int, space: str) -> None:
    """Snapping must not hide a real unlabelled class: one value far from every class covering a visible area."""
    far = (distance > FAR[space]) & (counts >= max(FAR_MIN_SHARE * total, LEVEL_MIN_PIXELS))
    if far.any():
        texts = [color_text(p) if space == "color" else str(int(p[0])) for p in points[far][:5]]
        shown = ", ".join(f"{text} × {int(c)} px" for text, c in zip(texts, counts[far][:5]))
        word = "color" if space == "color" else "value"
        raise DataError(f"{where}lossy mask has large areas far from every class {word}: {shown}")

