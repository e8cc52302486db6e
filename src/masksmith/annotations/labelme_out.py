"""Predicted masks → Labelme JSON files that Labelme opens for correction (one beside each mask).

Each region of a class becomes a polygon labelled with the class name, in the fill order of
:func:`masksmith.annotations.regions.fill_order`: later shapes over earlier ones, as Labelme's own export
and ``masksmith convert labelme`` paint them, so a hole is a ``_background_`` (or other-class) polygon
after the region around it. Polygons rather than Labelme's ``mask`` shapes: Labelme edits a polygon's
vertices, while a ``mask`` shape (a bitmap) can only be moved or deleted there.

``labels.txt`` (``__ignore__``, ``_background_``, then the classes 1..K-1) is written beside them, so
``convert labelme OUT DATASET --labels OUT/labels.txt`` gives back the model's class indices.
A JSON that is already there is replaced only when it is an unedited prediction of ours: a file a person
corrected (or any other annotation) is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from masksmith.annotations.regions import MIN_OUTLINE_IOU, check_tolerance, fill_order
from masksmith.core.fileio import write_text_atomic
from masksmith.errors import ConfigError

__all__ = ["LABELME_VERSION", "LabelmeWriter", "labelme_document", "labelme_label_names"]

# The format version Labelme 5.x writes and reads; an older reader warns on a newer major version.
LABELME_VERSION = "5.0.1"
IGNORE_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"
LABELS_NAME = "labels.txt"
# An indented point, [x, y] over four lines, written on one: files stay readable and a third of the size.
_POINT = re.compile(r"\[\s+(-?\d+),\s+(-?\d+)\s+\]")
# The key under which a predicted file records itself; Labelme keeps unknown top-level keys on save.
MARKER = "masksmith"


def labelme_label_names(class_names: Sequence[str]) -> list[str]:
    """The label of each class index in Labelme files: `_background_` for 0, then the class names."""
    labels = [BACKGROUND_LABEL, *class_names[1:]]
    for index, name in enumerate(labels[1:], start=1):
        if not isinstance(name, str) or not name or name != name.strip() or "\n" in name or "\r" in name:
            raise ConfigError(f"class {index} name {name!r} cannot be a Labelme label (empty, surrounded by "
                              "spaces or holding a line break)")
        if name in (IGNORE_LABEL, BACKGROUND_LABEL):
            raise ConfigError(f"class {index} is named {name!r}, which Labelme reserves for ignore / background")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"class names repeat: {sorted({n for n in labels if labels.count(n) > 1})}")
    return labels


def _shapes_digest(shapes: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(shapes, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def labelme_document(mask: np.ndarray, labels: Sequence[str], image_path: str, *,
                     tolerance: float = 1.0, min_iou: float = MIN_OUTLINE_IOU) -> dict[str, Any]:
    """The Labelme JSON (as a dict) of one class-index mask; `labels` from labelme_label_names."""
    shapes = []
    for outline in fill_order(mask, tolerance, min_iou):
        if outline.class_index >= len(labels):
            raise ConfigError(f"mask holds class {outline.class_index}, but there are only {len(labels)} classes")
        shapes.append({"label": labels[outline.class_index], "points": outline.points, "group_id": None,
                       "description": "", "shape_type": outline.shape_type, "flags": {}})
    height, width = mask.shape
    return {"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": None, "imageHeight": int(height), "imageWidth": int(width),
            MARKER: {"predicted": True, "tolerance": tolerance, "shapes_sha256": _shapes_digest(shapes)}}


def _unedited_prediction(path: Path) -> bool:
    """True when `path` is a prediction this writer made and nobody has changed its shapes since."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    marker = data.get(MARKER) if isinstance(data, dict) else None
    return (isinstance(marker, dict) and isinstance(data.get("shapes"), list)
            and marker.get("shapes_sha256") == _shapes_digest(data["shapes"]))


class LabelmeWriter:
    """Prediction sink: OUT/<name>.json beside each mask, and OUT/labels.txt."""

    def __init__(self, out_dir: str | Path, class_names: Sequence[str], *, tolerance: float = 1.0,
                 min_iou: float = MIN_OUTLINE_IOU) -> None:
        self.out_dir = Path(out_dir)
        self.labels = labelme_label_names(class_names)
        self.tolerance = check_tolerance(tolerance)
        self.min_iou = min_iou
        self.written: list[Path] = []

    def target(self, relative: Path) -> Path:
        """Where the JSON of the input with this relative path goes (beside its mask)."""
        return self.out_dir / relative.with_suffix(".json")

    def plan(self, items: Sequence[tuple[Path, Path]]) -> list[Path]:
        """Refuse, before any work, to replace a JSON that is not an unedited prediction; the files to write."""
        targets = [self.target(relative) for _, relative in items]
        for target in targets:
            if target.exists() and not _unedited_prediction(target):
                raise ConfigError(f"{target}: an annotation is already there (edited, or not a masksmith "
                                  "prediction); predict into another --out folder or move it away")
        labels_file = self.out_dir / LABELS_NAME
        if labels_file.exists() and labels_file.read_text(encoding="utf-8", errors="replace") != self._labels_text():
            raise ConfigError(f"{labels_file}: holds other labels; predict into another --out folder or move it away")
        return [*targets, labels_file]

    def _labels_text(self) -> str:
        return "\n".join([IGNORE_LABEL, *self.labels]) + "\n"

    def add(self, source: Path, relative: Path, probabilities: Any, mask: np.ndarray) -> None:
        """Write the Labelme JSON of one predicted mask; its imagePath is relative to the JSON."""
        target = self.target(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        image_path = Path(os.path.relpath(os.path.abspath(source), os.path.abspath(target.parent))).as_posix()
        document = labelme_document(mask, self.labels, image_path, tolerance=self.tolerance, min_iou=self.min_iou)
        write_text_atomic(target, _POINT.sub(r"[\1, \2]", json.dumps(document, indent=1)))
        self.written.append(target)

    def finish(self) -> None:
        """Write OUT/labels.txt (the class order `convert labelme --labels` needs)."""
        write_text_atomic(self.out_dir / LABELS_NAME, self._labels_text())
