"""How an image meets the network: resized whole, whole at its own size, or in overlapping tiles.

The one rule that predict, serve (its batching and its model card) and export (its int8 calibration views)
follow. Resize-trained models see every image resized to the training size. Crop-trained models are fully
convolutional and see the image at its own size, in tiles of the training size once a side exceeds
AUTO_TILE_FACTOR times it: whole-image inference on far larger inputs costs memory and sees contexts never
seen in training.
"""

from __future__ import annotations

from typing import Sequence

from masksmith.bundle import BundleMeta
from masksmith.data.sizes import resizes_whole_image

AUTO_TILE_FACTOR = 2.0
TILE_BATCH = 4  # tiles per forward pass


def default_overlap(tile: int) -> int:
    """Pixels neighbouring tiles share when none is given: a quarter of the tile."""
    return tile // 4


def network_input_size(meta: BundleMeta) -> tuple[int, int] | None:
    """The (height, width) every image is resized to before the network, or None for the image's own size."""
    return meta.input_shape if resizes_whole_image(meta.resize) else None


def auto_tile(meta: BundleMeta) -> int:
    """The side of the tiles a crop-trained model predicts large images in: its training size's longer side."""
    return max(meta.input_shape)


def auto_tile_limit(meta: BundleMeta, factor: float = AUTO_TILE_FACTOR) -> int:
    """The longest image side a crop-trained model still predicts whole (tiled above it)."""
    return int(factor * auto_tile(meta))


def tiling(meta: BundleMeta, shape: Sequence[int], *, tile: int | None = None, overlap: int | None = None,
           factor: float | None = AUTO_TILE_FACTOR) -> tuple[int, int] | None:
    """(tile, overlap) when an image of this HxW shape is predicted in tiles, else None.

    `tile`: the caller's tile side (tiles whenever the image is larger); None: automatic, by `factor`
    (None: never automatic).
    """
    if resizes_whole_image(meta.resize):
        return None  # the whole image is resized to the training size: tiles would change its scale
    if tile is None:
        if factor is None or max(shape[:2]) <= auto_tile_limit(meta, factor):
            return None
        tile = auto_tile(meta)
    if max(shape[:2]) <= tile:
        return None
    overlap = default_overlap(tile) if overlap is None else overlap
    return tile, min(overlap, tile - 1)


def describe_tiling(meta: BundleMeta, factor: float | None = AUTO_TILE_FACTOR) -> str:
    """The rule `tiling` applies to this model, in words (serve's model card)."""
    if resizes_whole_image(meta.resize):
        return "none (resized to the input size)"
    if factor is None:
        return "none (whole images at their own size)"
    return f"tiles of {auto_tile(meta)} px for images over {auto_tile_limit(meta, factor)} px"
