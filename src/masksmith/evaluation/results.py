"""What `masksmith.evaluate` returns: the scores of a split as types, and the JSON that metrics.json holds.

`result.miou` is the typed value; `result["miou"]` reads the same entry of `result.to_dict()`, the form
metrics.json and the reports take.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ClassScore:
    """One class's scores over the split; None where undefined (see metrics.ConfusionMatrix.compute)."""

    index: int
    name: str
    iou: float | None
    dice: float | None
    precision: float | None
    recall: float | None
    support: int
    predicted: int


@dataclass(frozen=True)
class ImageScore:
    """One image's mean Dice, mean IoU and pixel accuracy; None when none of its pixels counted."""

    name: str
    dice: float | None
    iou: float | None
    pixel_accuracy: float | None


@dataclass(frozen=True)
class FailedImage:
    """An image (or mask) that could not be read, and why (the reason names the file)."""

    name: str
    reason: str


@dataclass(frozen=True)
class EvaluationResult:
    """The scores of one evaluated split, where its reports went, and the images left out."""

    split: str
    images: int
    pixels: int
    pixel_accuracy: float | None
    miou: float | None
    mean_dice: float | None
    miou_no_background: float | None
    mean_dice_no_background: float | None
    mean_precision: float | None
    mean_recall: float | None
    image_dice: float | None
    image_dice_left_out: int
    tta: bool
    tta_passes: int
    per_class: list[ClassScore]
    per_image: list[ImageScore]
    failed: list[FailedImage]
    confusion_matrix: list[list[int]]
    out: Path | None = None  # the folder of metrics.json and the other reports
    html: Path | None = None  # report.html, when asked for
    extra: dict[str, Any] = field(default_factory=dict)  # entries of the scores without a field of their own

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EvaluationResult":
        """From the dict form (metrics.json's, with out and html when given)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        typed = {key: value for key, value in values.items() if key in names}
        typed["per_class"] = [ClassScore(**row) for row in values["per_class"]]
        typed["per_image"] = [ImageScore(**{key: row.get(key) for key in ("name", "dice", "iou", "pixel_accuracy")})
                              for row in values["per_image"]]
        typed["failed"] = [FailedImage(**row) for row in values["failed"]]
        for key in ("out", "html"):
            typed[key] = Path(values[key]) if values.get(key) is not None else None
        return cls(**typed, extra={key: value for key, value in values.items() if key not in names})

    def to_dict(self, *, files: bool = True) -> dict[str, Any]:
        """JSON values: metrics.json's entries (files=False), plus `out` and `html` as text."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("out", "html", "extra")}
        for key in ("per_class", "per_image", "failed"):
            values[key] = [asdict(row) for row in values[key]]
        values.update(self.extra)
        if files:
            values["out"] = None if self.out is None else str(self.out)
            if self.html is not None:
                values["html"] = str(self.html)
        return values

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """An entry of `to_dict()`, or `default`."""
        return self.to_dict().get(key, default)
