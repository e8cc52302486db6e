"""Which images to label next: per image, how unsure the model is, most unsure first (ranking.csv).

For class probabilities p (K x H x W) of one image:

* ``mean_entropy``: the pixels' mean predictive entropy -sum_k p_k log p_k, divided by log K so that it
  lies in [0, 1] (0: certain everywhere, 1: every class equally likely everywhere);
* ``uncertain_fraction``: the share of pixels whose two most likely classes are less than
  ``UNCERTAIN_MARGIN`` (0.2) apart, e.g. a binary pixel with a foreground probability in (0.4, 0.6);
* ``area_<class>``: the share of pixels predicted as each class (the decided mask).

Rows are sorted by mean entropy, then uncertain fraction, highest first.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from masksmith.core.fileio import atomic_path
from masksmith.errors import ConfigError

__all__ = ["RANKING_NAME", "UNCERTAIN_MARGIN", "RankingWriter", "image_uncertainty"]

RANKING_NAME = "ranking.csv"
UNCERTAIN_MARGIN = 0.2


def image_uncertainty(probabilities: torch.Tensor, margin: float = UNCERTAIN_MARGIN) -> tuple[float, float]:
    """(mean normalized entropy, fraction of pixels whose top-2 probabilities are closer than `margin`)."""
    probs = torch.as_tensor(probabilities, dtype=torch.float64)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ConfigError(f"expected K x H x W class probabilities with K >= 2, got shape {tuple(probs.shape)}")
    if probs[0].numel() == 0:
        return 0.0, 0.0
    # xlogy: 0 * log 0 = 0, so a certain pixel has entropy 0 instead of NaN.
    entropy = -torch.special.xlogy(probs, probs).sum(dim=0) / math.log(probs.shape[0])
    top = probs.topk(2, dim=0).values
    uncertain = (top[0] - top[1]) < margin
    return float(entropy.mean().clamp(0.0, 1.0)), float(uncertain.double().mean())


class RankingWriter:
    """Prediction sink: OUT/ranking.csv, every predicted image with its uncertainty, written at the end."""

    def __init__(self, out_dir: str | Path, class_names: Sequence[str], margin: float = UNCERTAIN_MARGIN) -> None:
        if not (isinstance(margin, (int, float)) and 0 < margin <= 1):
            raise ConfigError(f"uncertain margin must lie in (0, 1], got {margin!r}")
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        self.margin = float(margin)
        self.rows: list[dict[str, Any]] = []

    @property
    def target(self) -> Path:
        """OUT/ranking.csv."""
        return self.out_dir / RANKING_NAME

    def plan(self, items: Sequence[tuple[Path, Path]]) -> list[Path]:
        """The one file this sink writes."""
        return [self.target]

    def add(self, source: Path, relative: Path, probabilities: torch.Tensor, mask: np.ndarray) -> None:
        """Record one image's uncertainty and predicted class areas."""
        entropy, uncertain = image_uncertainty(probabilities, self.margin)
        counts = np.bincount(mask.ravel(), minlength=len(self.class_names))[:len(self.class_names)]
        areas = counts / max(1, mask.size)
        self.rows.append({"image": str(source), "mean_entropy": entropy, "uncertain_fraction": uncertain,
                          "areas": areas.tolist()})

    def ranked(self) -> list[dict[str, Any]]:
        """The rows, most uncertain first (ties: by image path)."""
        return sorted(self.rows, key=lambda r: (-r["mean_entropy"], -r["uncertain_fraction"], r["image"]))

    def finish(self) -> None:
        """Write OUT/ranking.csv atomically."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["rank", "image", "mean_entropy", "uncertain_fraction",
                         *(f"area_{name}" for name in self.class_names)])
        for rank, row in enumerate(self.ranked(), start=1):
            writer.writerow([rank, row["image"], f"{row['mean_entropy']:.6f}", f"{row['uncertain_fraction']:.6f}",
                             *(f"{area:.6f}" for area in row["areas"])])
        with atomic_path(self.target) as tmp:
            # Undecodable file-name bytes become \xNN escapes: the file stays valid UTF-8 for any CSV reader.
            tmp.write_bytes(buffer.getvalue().encode("utf-8", "backslashreplace"))
