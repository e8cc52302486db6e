"""What predicting one image costs, and the budget that refuses an image before a pixel of it is decoded.

The one rule for `masksmith serve` (from an upload's header) and for `predict` / `evaluate` (from each
file's header). An image's cost is the network passes it needs (tiles x TTA views, the tiles as the
Predictor lays them out) and the peak bytes its prediction allocates, stage by stage: decoding, the
normalized network input (padded for tiles), logits and probabilities at the original size
(K x H x W float32), the mask, and the encoded answer. The network's own activations are not counted:
they depend on its input (the training size, at most twice it per side, or one batch of tiles), never
on the size of the image. An image whose aspect ratio is over the budget's limit is refused first:
a 1 x 24,000,000 strip has few pixels, but padded to the network's multiple and cut into tiles it
costs gigabytes and hours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from masksmith.data.limits import open_image
from masksmith.errors import ConfigError, DataError

if TYPE_CHECKING:
    from masksmith.inference.ensemble import EnsemblePredictor
    from masksmith.inference.predictor import Predictor, TileGrid

    Model = Union[Predictor, EnsemblePredictor]

MB = 2**20
# A 25 MP photo through a 2-class model peaks at about 1.2 GB (tiled) or 0.5 GB (resized); a 59-class
# clothing photo (550x873) at about 0.25 GB. Serving runs one such large image at a time.
DEFAULT_SERVE_WORK_MB = 2048
# Offline, one image at a time: the largest image the pixel limit lets in (89 MP) fits, 2 classes, tiled.
DEFAULT_OFFLINE_WORK_MB = 8192
# Panoramas stay far below 100:1; a 1-pixel-high strip is no photo.
DEFAULT_MAX_ASPECT = 100.0
WORK_ENV_VAR = "MASKSMITH_MAX_WORK_MB"
ASPECT_ENV_VAR = "MASKSMITH_MAX_ASPECT"

FLOAT = 4  # bytes of a float32
# Bytes per pixel that encoding each kind of answer allocates besides the mask, measured on 2000x2000
# random masks (PNG 10, overlay 33, COCO RLE JSON 8.6, JSON with polygons 29 for 59 classes).
ANSWER_BYTES = {"mask": 10, "overlay": 34, "json": 10, "polygons": 32}


class WorkTooLarge(DataError):
    """An image whose prediction would cost more than the work budget; it was never decoded."""


@dataclass(frozen=True)
class WorkCost:
    """The estimated cost of predicting one image."""

    height: int
    width: int
    tiles: int  # tiles the image is cut into (1: it goes through the network whole)
    passes: int  # network forward passes: tiles x TTA views, summed over ensemble members
    peak_bytes: int
    stage: str  # where the peak is reached

    @property
    def pixels(self) -> int:
        """Pixels of the image."""
        return self.height * self.width


def mode_bytes(mode: str) -> int:
    """Bytes per pixel of decoding an image of this PIL mode into an array.

    PIL keeps every multi-band mode in 4 bytes per pixel; 16- and 32-bit intensities are scaled to
    8 bits through float64 copies (data.images), 24 bytes per pixel more.
    """
    if mode in ("1", "L", "P"):
        return 1
    wide = mode.startswith("I") or mode == "F"
    return (2 if mode.startswith("I;16") else 4) + (24 if wide else 0)


def _members(model: "Model") -> list["Predictor"]:
    # An EnsemblePredictor runs its members one after another on the same images.
    return list(getattr(model, "members", [model]))


def _model_bytes(resized: bool, grid: "TileGrid | None", channels: int, classes: int,
                 pixels: int) -> tuple[int, int]:
    """Bytes of one model's (logits, probabilities) stages for an image of `pixels` pixels."""
    if resized:
        # The network sees the training size (small); its logits are upsampled to the original size, softmax.
        return 0, 2 * FLOAT * classes * pixels
    padded = grid.height * grid.width if grid is not None else pixels
    normalized = FLOAT * channels * (pixels + padded)  # the normalized image and its padded copy
    # Tiled: the weighted sum of the tiles' logits, their weights and the quotient; whole: the logits.
    logits = FLOAT * (2 * classes + 1) * padded if grid is not None else FLOAT * classes * padded
    return normalized + logits, FLOAT * classes * (padded + pixels)


def estimate(model: "Model", height: int, width: int, *, source_bytes: int = 4, answer: str = "mask") -> WorkCost:
    """The passes and peak bytes of predicting an HxW image whose decoded source takes `source_bytes` per pixel.

    `answer`: what is encoded from the mask ("mask" PNG, "overlay", "json", "polygons").
    """
    if answer not in ANSWER_BYTES:
        raise ValueError(f"answer must be one of {', '.join(ANSWER_BYTES)}, got {answer!r}")
    members = _members(model)
    channels, classes = members[0].meta.in_channels, members[0].meta.num_classes
    pixels = height * width
    image = channels * pixels  # the decoded HxWxC array, alive until the answer is encoded
    # The source as PIL holds it, its upright (or RGB) copy, and the array.
    stages = {"decoding": pixels * (2 * source_bytes + 4) + image, "logits": 0, "probabilities": 0}
    # Several members: their running sum and the sum being formed, K x H x W each.
    averaging = 2 * FLOAT * classes * pixels if len(members) > 1 else 0
    tiles = passes = 0
    for member in members:
        grid = member.tile_grid_for((height, width))
        tiles = max(tiles, grid.count if grid is not None else 1)
        passes += (grid.count if grid is not None else 1) * member.tta_passes
        logits, probabilities = _model_bytes(member.input_size is not None, grid, channels, classes, pixels)
        stages["logits"] = max(stages["logits"], image + logits)
        stages["probabilities"] = max(stages["probabilities"], image + probabilities + averaging)
    # Binary: a comparison and its uint8 copy; otherwise max() gives float values and int64 indices.
    deciding = 2 if classes == 2 else FLOAT + 8 + 1
    stages["mask"] = image + pixels * (FLOAT * classes + deciding)
    stages["answer"] = image + pixels * (1 + ANSWER_BYTES[answer])
    stage = max(stages, key=lambda name: stages[name])
    return WorkCost(height, width, tiles, passes, stages[stage], stage)


@dataclass(frozen=True)
class WorkBudget:
    """The most bytes one image's prediction may allocate and the most extreme aspect ratio it may have."""

    max_bytes: int = DEFAULT_SERVE_WORK_MB * MB
    max_aspect: float = DEFAULT_MAX_ASPECT
    # How a user raises each limit: serve's flags, or the offline commands' environment variables.
    bytes_setting: str = "--max-work-mb"
    aspect_setting: str = "--max-aspect"

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ConfigError(f"{self.bytes_setting} must be positive, got {self.max_bytes / MB:g} MB")
        if not self.max_aspect >= 1:
            raise ConfigError(f"{self.aspect_setting} must be at least 1 (a square), got {self.max_aspect:g}")

    @classmethod
    def offline(cls) -> "WorkBudget":
        """predict's and evaluate's budget: $MASKSMITH_MAX_WORK_MB and $MASKSMITH_MAX_ASPECT, else the defaults."""
        work = _env_number(WORK_ENV_VAR, DEFAULT_OFFLINE_WORK_MB)
        return cls(int(work * MB), _env_number(ASPECT_ENV_VAR, DEFAULT_MAX_ASPECT), WORK_ENV_VAR, ASPECT_ENV_VAR)

    def check_shape(self, where: str, height: int, width: int) -> None:
        """Refuse an extreme aspect ratio (before the tiles of such an image are even laid out)."""
        ratio = max(height, width) / max(1, min(height, width))
        if ratio > self.max_aspect:
            raise WorkTooLarge(f"{where}: {width}x{height} image refused before decoding: its aspect ratio "
                               f"{ratio:,.0f}:1 is over the limit of {self.max_aspect:g}:1 "
                               f"(raise it with {self.aspect_setting})")

    def check(self, where: str, model: "Model", height: int, width: int, *, source_bytes: int = 4,
              answer: str = "mask") -> WorkCost:
        """The image's cost, or WorkTooLarge (one line naming `where`) when it is over the budget."""
        self.check_shape(where, height, width)
        cost = estimate(model, height, width, source_bytes=source_bytes, answer=answer)
        if cost.peak_bytes > self.max_bytes:
            raise WorkTooLarge(f"{where}: {width}x{height} image refused before decoding: predicting it would "
                               f"allocate about {cost.peak_bytes / MB:,.0f} MB at its peak ({cost.stage}; "
                               f"{cost.passes:,} network passes), over the work limit of {self.max_bytes / MB:,.0f} MB "
                               f"(raise it with {self.bytes_setting})")
        return cost


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name}: expected a positive number, got {text!r}")
    return value


def file_header(path: Path) -> tuple[int, int, int] | None:
    """(height, width, bytes per decoded pixel) from a file's header; None when it cannot be read.

    A file over the pixel limit raises its ImageTooLarge here; any other problem is left to the
    decoder, which words it.
    """
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception:  # not an array, pickled, truncated: read_image says which
            return None
        if not isinstance(array, np.ndarray) or array.ndim < 2:
            return None
        bands = array.shape[2] if array.ndim == 3 else 1
        scaled = 0 if array.dtype == np.uint8 else 24  # other types are scaled to 8 bits through float64 copies
        return int(array.shape[0]), int(array.shape[1]), array.dtype.itemsize * bands + scaled
    try:
        with open_image(path, "image") as image:
            width, height = image.size
            return height, width, mode_bytes(image.mode)
    except DataError:
        raise
    except Exception:
        return None


def check_file(model: "Model", path: str | Path, budget: WorkBudget | None = None, answer: str = "mask") -> None:
    """Refuse an image file whose prediction is over the budget (default: the offline one) from its header."""
    path = Path(path)
    header = file_header(path)
    if header is not None:
        height, width, source_bytes = header
        (budget or WorkBudget.offline()).check(str(path), model, height, width, source_bytes=source_bytes,
                                               answer=answer)
