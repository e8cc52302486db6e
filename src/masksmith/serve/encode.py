"""Response bodies besides the mask PNG (which is visualize.mask_png_bytes, predict's own encoder): overlay, JSON."""

from __future__ import annotations

from typing import Any

import numpy as np

from masksmith.visualize import image_bytes, overlay

FORMATS = ("png", "overlay", "json")


def overlay_png(image: np.ndarray, mask: np.ndarray, colors: np.ndarray, ignore_index: int) -> bytes:
    """The image with the class colors blended over it (as `predict --overlay`), as PNG bytes."""
    return image_bytes(overlay(image, mask, colors, ignore_index=ignore_index), "PNG")


def class_areas(mask: np.ndarray, class_names: list[str], colors: np.ndarray) -> list[dict[str, Any]]:
    """Pixel count and share of the image for every class, in index order."""
    counts = np.bincount(mask.ravel(), minlength=len(class_names))
    total = max(1, mask.size)
    return [{"index": i, "name": name, "color": [int(c) for c in colors[i]], "pixels": int(counts[i]),
             "share": float(counts[i]) / total} for i, name in enumerate(class_names)]


def coco_rle(mask: np.ndarray, num_classes: int) -> list[dict[str, Any]]:
    """One COCO RLE (uncompressed-size + compressed counts string) per class present in the mask."""
    from pycocotools import mask as coco_mask

    encoded = []
    for index in np.unique(mask):
        if int(index) >= num_classes:
            continue
        # pycocotools wants column-major uint8.
        rle = coco_mask.encode(np.asfortranarray((mask == index).astype(np.uint8)))
        encoded.append({"class": int(index), "size": [int(v) for v in rle["size"]],
                        "counts": rle["counts"].decode("ascii")})
    return encoded


def polygons(mask: np.ndarray, num_classes: int, background: int = 0) -> list[dict[str, Any]]:
    """Outer boundaries of each non-background class region as COCO polygons [x1, y1, x2, y2, ...].

    Holes are not polygons here (COCO polygons have none); the RLE of the same class is exact.
    """
    import cv2

    shapes = []
    for index in np.unique(mask):
        if int(index) == background or int(index) >= num_classes:
            continue
        contours, _ = cv2.findContours((mask == index).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        rings = [contour.reshape(-1).astype(int).tolist() for contour in contours if len(contour) >= 3]
        if rings:
            shapes.append({"class": int(index), "polygons": rings})
    return shapes


def mask_document(mask: np.ndarray, class_names: list[str], colors: np.ndarray, *, with_polygons: bool,
                  model: dict[str, str], timings_ms: dict[str, float]) -> dict[str, Any]:
    """The JSON answer: size, per-class areas, RLE (and polygons), model id and checksum, timings."""
    document: dict[str, Any] = {
        "width": int(mask.shape[1]), "height": int(mask.shape[0]),
        "model": model,
        "classes": class_areas(mask, class_names, colors),
        "rle": coco_rle(mask, len(class_names)),
    }
    if with_polygons:
        document["polygons"] = polygons(mask, len(class_names))
    document["timings_ms"] = {name: round(value, 3) for name, value in timings_ms.items()}
    return document
