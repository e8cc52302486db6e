"""Predictions as annotations to correct (Labelme JSON, COCO) and the "label these next" ranking.

Each writer is a *prediction sink* that `masksmith.inference.predictor.predict_files` calls for every image:
``plan(items)`` before any work (refuse clashes, name the files it will write), ``add(source, relative,
probabilities, mask)`` per predicted image, and ``finish()`` once at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from masksmith.annotations.coco_out import CocoWriter
from masksmith.annotations.labelme_out import LabelmeWriter
from masksmith.annotations.ranking import RankingWriter
from masksmith.annotations.regions import check_tolerance, fill_order

from masksmith.errors import ConfigError

__all__ = ["ANNOTATION_FORMATS", "CocoWriter", "LabelmeWriter", "PredictionSink", "RankingWriter",
           "annotation_sinks", "check_annotation_options", "check_tolerance", "fill_order"]

ANNOTATION_FORMATS = ("png", "labelme", "coco")
DEFAULT_TOLERANCE = 1.0


class PredictionSink(Protocol):
    """Receives every predicted image of a run (see the module docstring)."""

    def plan(self, items: Sequence[tuple[Path, Path]]) -> list[Path]:
        """Check (source, relative) items before any work; return the files this sink will write."""

    def add(self, source: Path, relative: Path, probabilities: Any, mask: np.ndarray) -> None:
        """Take one predicted image: its K x H x W probabilities and its decided HxW mask."""

    def finish(self) -> None:
        """Write what was collected."""


def check_annotation_options(annotation_format: str = "png", tolerance: float = DEFAULT_TOLERANCE,
                             rank: bool = False, resume: bool = False) -> None:
    """ConfigError for an unknown format, a bad polygon tolerance, or a resumed run that needs every image."""
    if annotation_format not in ANNOTATION_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(ANNOTATION_FORMATS)}, got {annotation_format!r}")
    check_tolerance(tolerance)
    if resume and (rank or annotation_format == "coco"):
        # Both files describe the whole run; a resumed run predicts only the images still missing.
        raise ConfigError("--resume cannot be combined with --rank or --format coco: they need every image")


def annotation_sinks(out_dir: str | Path, class_names: Sequence[str], *, annotation_format: str = "png",
                     tolerance: float = DEFAULT_TOLERANCE, rank: bool = False,
                     resume: bool = False) -> list[PredictionSink]:
    """The sinks for `predict --format FORMAT [--rank]` (png: the masks alone, no sink)."""
    check_annotation_options(annotation_format, tolerance, rank, resume)
    sinks: list[PredictionSink] = []
    if annotation_format == "labelme":
        sinks.append(LabelmeWriter(out_dir, class_names, tolerance=tolerance))
    elif annotation_format == "coco":
        sinks.append(CocoWriter(out_dir, class_names))
    if rank:
        sinks.append(RankingWriter(out_dir, class_names))
    return sinks
