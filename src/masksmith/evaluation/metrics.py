"""One confusion-matrix accumulator; every segmentation metric is derived from it."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_index_tensor(values: ArrayLike, label: str) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        # Bool masks are refused too: True/False only mean 1/0 by accident of encoding.
        raise ValueError(f"{label} must hold integer class indices, got dtype {tensor.dtype}")
    return tensor


def _counts(pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int) -> np.ndarray:
    """Confusion counts [truth, prediction] of one pair of index arrays, ignored pixels skipped."""
    pred_t = _as_index_tensor(pred, "pred")
    target_t = _as_index_tensor(target, "target")
    if pred_t.shape != target_t.shape:
        raise ValueError(
            f"pred shape {tuple(pred_t.shape)} differs from target shape {tuple(target_t.shape)}"
        )
    pred_t = pred_t.to(target_t.device)
    valid = target_t != ignore_index
    # int64 before multiplying: target * K overflows uint8 masks.
    truth = target_t[valid].long()
    guess = pred_t[valid].long()
    if truth.numel() == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    for label, values in (("target", truth), ("pred", guess)):
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{label} holds class {low if low < 0 else high}, outside 0..{num_classes - 1}"
                + (f" (and not ignore_index={ignore_index})" if label == "target" else "")
            )
    # One bincount over truth * K + prediction fills the whole K x K matrix in a single pass.
    flat = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0 (undefined)."""
    out = np.full(numerator.shape, np.nan, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _mean(values: np.ndarray) -> float | None:
    """Mean over the defined (non-NaN) entries, None when none is defined."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


class ConfusionMatrix:
    """Accumulates a K x K pixel confusion matrix (rows = truth, columns = prediction)."""

    def __init__(self, num_classes: int, ignore_index: int):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """The counts so far: int64 [K, K], rows = truth, columns = prediction (a copy)."""
        return self._matrix.copy()

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch: class-index arrays/tensors of equal shape; target == ignore_index skipped.

        Raises ValueError for mismatched shapes, non-integer dtypes, or a class outside 0..K-1 at a
        counted pixel (prediction values at ignored pixels are not looked at).
        """
        self._matrix += _counts(pred, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._matrix[:] = 0

    @classmethod
    def from_counts(cls, counts: ArrayLike, ignore_index: int) -> ConfusionMatrix:
        """An accumulator holding `counts` (a K x K matrix, e.g. summed over the processes of a run)."""
        matrix = np.asarray(counts)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or (matrix < 0).any():
            raise ValueError(f"counts must be a square matrix of non-negative counts, got shape {matrix.shape}")
        accumulator = cls(int(matrix.shape[0]), ignore_index)
        accumulator._matrix += np.rint(matrix).astype(np.int64)
        return accumulator

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another accumulator's counts (e.g. from another worker) into this one; returns self."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore_index={other.ignore_index}) "
                f"into a {self.num_classes}-class one (ignore_index={self.ignore_index})"
            )
        self._matrix += other._matrix
        return self

    def compute(
        self, class_names: Sequence[str] | None = None, background_index: int | None = 0
    ) -> dict[str, Any]:
        """Metrics as a JSON-serialisable dict (python floats; None where undefined).

        Per class c, with tp = matrix[c, c], support = truth pixels, predicted = predicted pixels:
        iou = tp / (support + predicted - tp), dice = 2 tp / (support + predicted),
        precision = tp / predicted, recall = tp / support.
        Undefined values are None: iou/dice for a class with neither truth nor predicted pixels,
        precision for a class never predicted, recall for a class with no truth pixels.
        Every mean (miou, mean_dice, mean_precision, mean_recall) averages only the defined
        values, so a class absent from both truth and prediction is left out rather than counted
        as 0 or 1. The *_no_background means also leave out `background_index` (None keeps all).
        pixel_accuracy is correct pixels / counted pixels (None before any pixel is counted).
        """
        k = self.num_classes
        if class_names is None:
            names = [f"class_{index}" for index in range(k)]
        else:
            names = [str(name) for name in class_names]
            if len(names) != k:
                raise ValueError(f"got {len(names)} class names for {k} classes")
        matrix = self._matrix
        tp = np.diag(matrix).astype(np.float64)
        support = matrix.sum(axis=1).astype(np.float64)
        predicted = matrix.sum(axis=0).astype(np.float64)
        iou = _ratio(tp, support + predicted - tp)
        dice = _ratio(2.0 * tp, support + predicted)
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, support)
        foreground = np.ones(k, dtype=bool)
        if background_index is not None and 0 <= background_index < k:
            foreground[background_index] = False
        total = matrix.sum()
        return {
            "pixel_accuracy": float(tp.sum() / total) if total else None,
            "miou": _mean(iou),
            "mean_dice": _mean(dice),
            "miou_no_background": _mean(iou[foreground]),
            "mean_dice_no_background": _mean(dice[foreground]),
            "mean_precision": _mean(precision),
            "mean_recall": _mean(recall),
            "pixels": int(total),
            "per_class": [
                {
                    "index": index,
                    "name": names[index],
                    "iou": _json_float(iou[index]),
                    "dice": _json_float(dice[index]),
                    "precision": _json_float(precision[index]),
                    "recall": _json_float(recall[index]),
                    "support": int(support[index]),
                    "predicted": int(predicted[index]),
                }
                for index in range(k)
            ],
        }


def per_image_dice(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int,
    ignore_index: int,
    background_index: int | None = 0,
) -> float:
    """Mean Dice of one image over the non-background classes in its truth or prediction; NaN if nothing counted.

    Classes absent from both this image's truth and prediction are left out. When none is left
    (truth and prediction both all background) the image scores 1.0: an empty prediction for an
    empty image is a perfect answer, not an undefined one. An image whose every pixel is ignored
    has no answer to judge: NaN, which `mean_image_score` leaves out (and counts).
    """
    return per_image_scores(pred, target, num_classes, ignore_index, background_index)["dice"]


def per_image_scores(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int,
    ignore_index: int,
    background_index: int | None = 0,
) -> dict[str, float]:
    """One image's mean Dice and mean IoU (rules of `per_image_dice`) and its pixel accuracy; NaN if nothing counted."""
    matrix = _counts(pred, target, num_classes, ignore_index).astype(np.float64)
    if not matrix.any():
        return {"dice": float("nan"), "iou": float("nan"), "pixel_accuracy": float("nan")}
    tp = np.diag(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    scores = {"dice": _ratio(2.0 * tp, support + predicted), "iou": _ratio(tp, support + predicted - tp)}
    out: dict[str, float] = {}
    for key, values in scores.items():
        if background_index is not None and 0 <= background_index < num_classes:
            values[background_index] = np.nan
        mean = _mean(values)
        out[key] = 1.0 if mean is None else mean
    # Accuracy counts background too: it is the share of the image's (non-ignored) pixels that are right.
    out["pixel_accuracy"] = float(tp.sum() / matrix.sum())
    return out


def mean_image_score(scores: Sequence[float | None]) -> tuple[float | None, int]:
    """(mean of the defined per-image scores or None, how many were undefined and left out)."""
    values = np.array([np.nan if score is None else score for score in scores], dtype=np.float64)
    left_out = int(np.isnan(values).sum())
    return _mean(values), left_out
