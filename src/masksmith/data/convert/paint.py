"""Regions → class and instance masks, one region over the next: the drawing rule of the YOLO, Label
Studio and CVAT converters (Labelme and COCO keep their own tools' rules).

Each region is painted over the ones before it, so the order the caller gives is the stacking order:
file order for YOLO and Label Studio, z_order then file order for CVAT. A region of class 0 (a label
named background) erases to background in both masks; an ``__ignore__`` region is the ignore value in
both. Instance ids are 1, 2, ... in order of first appearance; regions with the same instance key are one
instance (a CVAT group).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from masksmith.data.encoding import DEFAULT_IGNORE_INDEX
from masksmith.errors import DataError

__all__ = ["MAX_INSTANCE_ID", "Region", "paint"]

# Instance ids share the byte with the ignore value.
MAX_INSTANCE_ID = DEFAULT_IGNORE_INDEX - 1


@dataclass(frozen=True)
class Region:
    """One annotated area: its class index, its instance key (None: an instance of its own) and its pixels."""

    class_index: int
    instance: Hashable | None
    pixels: Callable[[], np.ndarray]  # HxW bool; called only when painted, so masks need not all fit in memory


def paint(where: str, size: tuple[int, int], regions: Iterable[Region], *,
          instances: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Class mask and instance mask (None unless `instances`) of one image: each region over the ones before."""
    classes = np.zeros(size, dtype=np.uint8)
    objects = np.zeros(size, dtype=np.uint8) if instances else None
    ids: dict[Hashable, int] = {}
    for number, region in enumerate(regions):
        pixels = region.pixels()
        classes[pixels] = region.class_index
        if objects is None:
            continue
        if region.class_index in (0, DEFAULT_IGNORE_INDEX):
            objects[pixels] = region.class_index
            continue
        key = region.instance if region.instance is not None else ("region", number)
        if key not in ids:
            if len(ids) == MAX_INSTANCE_ID:
                raise DataError(f"{where}: more than {MAX_INSTANCE_ID} instances do not fit an 8-bit mask "
                                "(convert with --no-instances for the class masks alone)")
            ids[key] = len(ids) + 1
        objects[pixels] = ids[key]
    return classes, objects
