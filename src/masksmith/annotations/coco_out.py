"""Predicted masks → one COCO JSON: a dataset (images, categories) whose annotations carry a "score".

One annotation per 4-connected region of a class, its pixels as compressed RLE (pycocotools; holes are
simply pixels left out), its score the mean probability of that class over the region. Categories are
the classes 1..K-1 with ids equal to the class index; background is no category, as in COCO, so
``convert coco`` (which puts background first) gives back the model's class indices. ``file_name`` is
relative to the images' common folder, recorded in ``info.images_dir`` for ``convert coco``'s IMAGES.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from masksmith.annotations.regions import regions
from masksmith.core.fileio import write_text_atomic
from masksmith.errors import ConfigError

__all__ = ["COCO_NAME", "CocoWriter", "coco_categories", "coco_region_annotations"]

COCO_NAME = "coco.json"
DESCRIPTION = "masksmith predictions"
# Names convert coco (and COCO tools generally) read as the background category.
_BACKGROUND_NAMES = ("_background_", "background", "__background__")


def coco_categories(class_names: Sequence[str]) -> list[dict[str, Any]]:
    """COCO categories for classes 1..K-1 (id = class index); refuses names convert coco would misread."""
    names = list(class_names[1:])
    for index, name in enumerate(names, start=1):
        if not isinstance(name, str) or name.strip().lower() in _BACKGROUND_NAMES:
            raise ConfigError(f"class {index} is named {name!r}, which COCO readers take for the background")
    if len(set(names)) != len(names):
        raise ConfigError(f"class names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return [{"id": index, "name": name, "supercategory": ""} for index, name in enumerate(names, start=1)]


def coco_region_annotations(mask: np.ndarray, probabilities: torch.Tensor | np.ndarray | None,
                            image_id: int, first_id: int = 1) -> list[dict[str, Any]]:
    """COCO annotations (RLE, area, bbox, score) of every non-background region of one mask."""
    height, width = mask.shape
    scores = probabilities.numpy() if isinstance(probabilities, torch.Tensor) else probabilities
    annotations = []
    canvas = np.zeros((height, width), dtype=np.uint8, order="F")  # reused: one region drawn at a time
    for region in regions(mask):
        x, y, w, h = region.box
        canvas[y:y + h, x:x + w] = region.pixels
        rle = mask_utils.encode(canvas)
        canvas[y:y + h, x:x + w] = 0
        score = None
        if scores is not None:
            score = round(float(scores[region.class_index, y:y + h, x:x + w][region.pixels].mean()), 5)
        annotations.append({"id": first_id + len(annotations), "image_id": image_id,
                            "category_id": region.class_index, "iscrowd": 0, "area": region.area,
                            "bbox": [x, y, w, h], "segmentation": {"size": [height, width],
                                                                   "counts": rle["counts"].decode("ascii")},
                            "score": score})
    return annotations


class CocoWriter:
    """Prediction sink: OUT/coco.json with every predicted image, written once at the end."""

    def __init__(self, out_dir: str | Path, class_names: Sequence[str]) -> None:
        self.out_dir = Path(out_dir)
        self.categories = coco_categories(class_names)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.images_dir = Path(".")

    @property
    def target(self) -> Path:
        """OUT/coco.json."""
        return self.out_dir / COCO_NAME

    def plan(self, items: Sequence[tuple[Path, Path]]) -> list[Path]:
        """Fix the images' common folder; refuse, before any work, to replace a COCO file we did not write."""
        folders = [os.path.abspath(source.parent) for source, _ in items]
        self.images_dir = Path(os.path.commonpath(folders)) if folders else Path(".")
        if self.target.exists():
            try:
                ours = json.loads(self.target.read_text(encoding="utf-8")).get("info", {}).get("description")
            except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
                ours = None
            if ours != DESCRIPTION:
                raise ConfigError(f"{self.target}: a COCO file masksmith did not write is there; "
                                  "predict into another --out folder or move it away")
        return [self.target]

    def add(self, source: Path, relative: Path, probabilities: torch.Tensor, mask: np.ndarray) -> None:
        """Add one predicted image and its regions."""
        image_id = len(self.images) + 1
        file_name = Path(os.path.relpath(os.path.abspath(source), self.images_dir)).as_posix()
        height, width = mask.shape
        self.images.append({"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)})
        self.annotations += coco_region_annotations(mask, probabilities, image_id, len(self.annotations) + 1)

    def finish(self) -> None:
        """Write OUT/coco.json atomically."""
        document = {"info": {"description": DESCRIPTION, "images_dir": str(self.images_dir)},
                    "images": self.images, "annotations": self.annotations, "categories": self.categories}
        write_text_atomic(self.target, json.dumps(document))
