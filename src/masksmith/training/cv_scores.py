"""The out-of-fold scores of a cross-validation: each fold's model on its own validation images at original
size, one confusion matrix per fold and their sum (the pooled score), mean ± std over folds, and the table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from masksmith.data.discover import Sample
from masksmith.data.encoding import MaskEncoding
from masksmith.data.masks import read_mask
from masksmith.errors import DataError, MasksmithError
from masksmith.evaluation.metrics import ConfusionMatrix, mean_image_score, per_image_dice
from masksmith.inference.predictor import Predictor

SUMMARY_FORMAT = "masksmith-cv-summary"
METRICS = ("miou", "mean_dice", "miou_no_background", "mean_dice_no_background", "pixel_accuracy",
           "mean_precision", "mean_recall", "image_dice")
CLASS_METRICS = ("iou", "dice", "precision", "recall")


def score_fold(predictor: Predictor, samples: Sequence[Sample], *, desc: str = "scoring",
               progress: bool = False) -> tuple[ConfusionMatrix, list[float | None], list[dict[str, str]]]:
    """One model on labelled samples at their original size: its confusion matrix, per-image Dice, bad pairs."""
    meta = predictor.meta
    encoding = MaskEncoding.from_dict(meta.mask_encoding)
    confusion = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    dice: list[float | None] = []
    failed: list[dict[str, str]] = []
    for sample in tqdm(samples, desc=desc, unit="img", disable=not progress):
        try:
            image = predictor.to_array(sample.image)
            truth = read_mask(sample.mask, encoding, meta.num_classes, meta.ignore_index)
            if truth.shape != image.shape[:2]:
                raise DataError(f"{sample.mask}: mask is {truth.shape[1]}x{truth.shape[0]} but image "
                                f"{sample.image.name} is {image.shape[1]}x{image.shape[0]}")
        except DataError as error:
            failed.append({"name": sample.name, "reason": str(error)})  # listed, the others still scored
            continue
        prediction = predictor.predict(image)
        confusion.update(prediction, truth)
        value = per_image_dice(prediction, truth, meta.num_classes, meta.ignore_index)
        dice.append(None if math.isnan(value) else value)
    return confusion, dice, failed


def _scores(confusion: ConfusionMatrix, dice: list[float | None], names: list[str]) -> dict[str, Any]:
    result = confusion.compute(class_names=names)
    result["image_dice"], result["image_dice_left_out"] = mean_image_score(dice)
    result["confusion_matrix"] = confusion.matrix.tolist()
    return result


def mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (ddof 1) of the defined values; None where undefined."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    return {"mean": float(defined.mean()) if defined.size else None,
            "std": float(defined.std(ddof=1)) if defined.size > 1 else None}


def score_folds(members: Sequence[Path], folds: Sequence[Sequence[Sample]], run_dir: Path, *,
                progress: bool = False) -> dict[str, Any]:
    """cv_summary.json's content: per-fold scores, mean ± std over folds, the pooled out-of-fold score."""
    per_fold: list[dict[str, Any]] = []
    pooled: ConfusionMatrix | None = None
    pooled_dice: list[float | None] = []
    names: list[str] = []
    for fold, (bundle, samples) in enumerate(zip(members, folds)):
        try:
            predictor = Predictor.load(bundle)
        except MasksmithError as error:
            raise DataError(f"fold {fold}: {error}") from None
        if pooled is None:
            names = list(predictor.class_names)
            pooled = ConfusionMatrix(predictor.meta.num_classes, predictor.meta.ignore_index)
        elif list(predictor.class_names) != names:
            raise DataError(f"{bundle}: classes {predictor.class_names} differ from fold 0's {names}; "
                            "give the classes (--classes, --palette) so every fold decides the same")
        confusion, dice, failed = score_fold(predictor, samples, desc=f"fold {fold} out-of-fold", progress=progress)
        if not dice:
            raise DataError(f"fold {fold}: none of its {len(samples)} validation images could be scored; "
                            f"first: {failed[0]['reason'] if failed else 'none given'}")
        pooled.merge(confusion)
        pooled_dice += dice
        per_fold.append({"fold": fold, "bundle": str(bundle.relative_to(run_dir) if bundle.is_relative_to(run_dir)
                                                         else bundle),
                         "images": len(dice), "failed": failed, **_scores(confusion, dice, names)})
    assert pooled is not None
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT, "folds": len(per_fold), "images": len(pooled_dice),
        "members": [row["bundle"] for row in per_fold],
        **{key: mean_std([row[key] for row in per_fold]) for key in METRICS}}
    pooled_scores = _scores(pooled, pooled_dice, names)
    summary["per_class"] = [
        {"index": index, "name": name,
         **{key: {**mean_std([row["per_class"][index][key] for row in per_fold]),
                  "pooled": pooled_scores["per_class"][index][key]} for key in CLASS_METRICS}}
        for index, name in enumerate(names)]
    summary["pooled"] = pooled_scores
    summary["per_fold"] = per_fold
    return summary


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def summary_table(summary: dict[str, Any]) -> str:
    """The fold scores as a Markdown table: one row per metric (and per class), each fold, mean ± std, pooled."""
    folds = summary["per_fold"]
    header = ["metric", *(f"fold {row['fold']}" for row in folds), "mean ± std", "pooled out-of-fold"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def row(label: str, values: list[float | None], stats: dict[str, float | None], pooled: float | None) -> None:
        spread = _cell(stats["mean"]) + ("" if stats["std"] is None else f" ± {stats['std']:.4f}")
        lines.append("| " + " | ".join([label, *map(_cell, values), spread, _cell(pooled)]) + " |")

    for key in METRICS:
        row(key, [fold[key] for fold in folds], summary[key], summary["pooled"][key])
    for entry in summary["per_class"]:
        for key in ("iou", "dice"):
            row(f"{key} {entry['name']}", [fold["per_class"][entry["index"]][key] for fold in folds],
                entry[key], entry[key]["pooled"])
    counts = "/".join(str(fold["images"]) for fold in folds)
    return "\n".join(lines) + f"\n\n{summary['folds']} folds, {summary['images']} validation images ({counts}); " \
                              "std over folds (ddof 1); pooled: one confusion matrix summed over the folds.\n"
