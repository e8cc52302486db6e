"""`masksmith.evaluate`: predict a labelled split at original resolution and score it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from masksmith.core.fileio import require_writable
from masksmith.data.discover import Sample, discover, random_split_pool
from masksmith.data.encoding import MaskEncoding
from masksmith.data.masks import read_mask
from masksmith.errors import DataError, MasksmithError
from masksmith.evaluation.config import EvaluateConfig
from masksmith.evaluation.html_report import ThumbnailKeeper, write_html_report
from masksmith.evaluation.metrics import ConfusionMatrix, mean_image_score, per_image_scores
from masksmith.evaluation.report import write_report
from masksmith.evaluation.results import EvaluationResult
from masksmith.inference.backend_choice import DEFAULT_BACKEND
from masksmith.inference.ensemble import EnsemblePredictor, load_models, models_home
from masksmith.inference.pipeline import Prefetch, Writer, pipeline_depth
from masksmith.inference.predictor import Predictor, check_threshold
from masksmith.inference.work_budget import WorkBudget, check_file

GALLERY_EACH = 3


class GalleryPicker:
    """The gallery's best and worst `each` images by per-image Dice, kept as they pass (image, truth, prediction),
    so the gallery neither re-reads nor re-predicts them; at most 2 * each + 1 images are held at a time."""

    def __init__(self, each: int = GALLERY_EACH):
        self.each = each
        self._kept: list[tuple[float, int, str, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, index: int, dice: float | None, name: str, image: np.ndarray, truth: np.ndarray,
            prediction: np.ndarray) -> None:
        """Offer image `index`; images without a Dice are never shown."""
        if dice is None:
            return
        self._kept.append((dice, index, name, image, truth, prediction))
        # Order by (Dice, index), as a stable sort by Dice would: an image out of both ends now stays out.
        self._kept.sort(key=lambda row: row[:2])
        if len(self._kept) > 2 * self.each:
            del self._kept[self.each]

    def rows(self) -> list[dict[str, Any]]:
        """Gallery rows: the best first (highest Dice first), then the worst (lowest first)."""
        worst = self._kept[:self.each]
        shown = {row[1] for row in worst}
        best = [row for row in reversed(self._kept[-self.each:]) if row[1] not in shown] if self.each else []
        return [{"image": image, "truth": truth, "prediction": prediction,
                 "caption": f"{label}: {name} (Dice {dice:.3f})"}
                for label, chosen in (("best", best), ("worst", worst))
                for dice, _, name, image, truth, prediction in chosen]


def select_split(data: str | Path, predictor: Predictor, split: str, mask_suffix: str | None = None) -> list[Sample]:
    """The samples of `split`: a split folder, the bundle's recorded random split (val, or train: the rest of its
    pool), or all."""
    splits = discover(data, mask_suffix=mask_suffix)
    if split == "all":
        return sorted((s for samples in splits.values() for s in samples), key=lambda s: s.name)
    recorded = predictor.meta.split
    # A cross-validation fold's validation images come from the pooled train (+val) folders: its record decides.
    if split in splits and not (split == "val" and recorded.get("kind") == "fold"):
        return splits[split]
    if split == "val" and recorded.get("kind") in ("random", "fold"):
        wanted = set(recorded.get("val", []))
        pool = [s for samples in splits.values() for s in samples]
        chosen = [s for s in pool if s.name in wanted]
        if not chosen:
            raise DataError(f"{data}: none of the model's {len(wanted)} validation images are here; "
                            "use --split all to evaluate every image")
        return chosen
    if split == "train" and recorded.get("kind") == "random":
        # The training images of a recorded random split: the pool it was drawn from, less its validation images.
        wanted = set(recorded.get("val", []))
        pool = random_split_pool(splits)
        if not wanted & {s.name for s in pool}:
            raise DataError(f"{data}: none of the model's {len(wanted)} validation images are here, so its training "
                            "images cannot be told apart; use --split all to evaluate every image")
        return [s for s in pool if s.name not in wanted]
    raise DataError(f"{data}: no '{split}' split here (found: {', '.join(sorted(splits))}); "
                    "use --split all to evaluate every image")


def evaluate(bundle: str | Path | Sequence[str | Path] | Predictor | EnsemblePredictor, data: str | Path, *, split: str = "val", out: str | Path | None = None,
             mask_suffix: str | None = None, threshold: float | None = None, progress: bool = True,
             html: bool = False, tta: bool = False, backend: str = DEFAULT_BACKEND,
             depth: int | None = None) -> EvaluationResult:
    """Score a model on a labelled split; writes metrics.json, per_class.csv, plots, a gallery (html: report.html).

    Several models, or a cross-validation run folder, are scored as their ensemble (probabilities averaged).
    `tta`: each image's prediction averages the logits of its flips (as `predict --tta`; files only).
    `backend`: what a model file runs on (masksmith.inference.backend_choice); `depth`: pairs read ahead and
    scorings waiting (masksmith.inference.pipeline; 0: one step after the other).
    The keywords are EvaluateConfig's (evaluation/config.py), checked by it before anything is read."""
    EvaluateConfig.of(split=split, out=out, mask_suffix=mask_suffix, threshold=threshold, html=html, tta=tta,
                      backend=backend)
    check_threshold(threshold)
    in_memory = not isinstance(bundle, (str, Path, list, tuple))
    if in_memory and tta:
        raise MasksmithError("tta is an option of a model loaded from a file; give Predictor(..., tta=True) instead")
    predictor = bundle if in_memory else load_models(bundle, tta=tta, backend=backend)  # type: ignore[arg-type]
    meta = predictor.meta
    samples = select_split(data, predictor, split, mask_suffix)
    if out is None:
        out = (Path(".") if in_memory else models_home(bundle)) / f"evaluate-{split}"  # type: ignore[arg-type]
    out_dir = require_writable(out)  # before the first prediction, not after the last
    encoding = MaskEncoding.from_dict(meta.mask_encoding)
    confusion = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    per_image: list[dict[str, Any]] = []
    scored: list[Sample] = []
    failed: list[dict[str, str]] = []
    # Thumbnails are made as the images pass (never all full images in memory), only for the page.
    keeper = ThumbnailKeeper(predictor.colors, meta.ignore_index) if html else None
    gallery = GalleryPicker()
    budget = WorkBudget.offline()
    depth = pipeline_depth() if depth is None else depth

    def read(sample: Sample) -> tuple[np.ndarray, np.ndarray] | DataError:
        try:
            check_file(predictor, sample.image, budget)  # before decoding: an image too costly to predict
            return _read_pair(predictor, sample, encoding)
        except DataError as error:
            return error

    def score(name: str, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
        confusion.update(prediction, truth)
        scores = per_image_scores(prediction, truth, meta.num_classes, meta.ignore_index)
        per_image.append({"name": name, **{key: None if np.isnan(value) else value for key, value in scores.items()}})
        gallery.add(len(per_image) - 1, per_image[-1]["dice"], name, image, truth, prediction)
        if keeper is not None:
            keeper.add(len(per_image) - 1, per_image[-1]["dice"], image, truth, prediction)

    # The next pairs are read and the last predictions scored beside the model (masksmith.inference.pipeline).
    with (Prefetch(samples, read, depth=depth, size=_pair_bytes) as pairs, Writer(depth=depth) as scorer,
          tqdm(total=len(samples), desc=f"evaluating {split}", unit="img", disable=not progress) as bar):
        for sample, pair in pairs:
            if isinstance(pair, DataError):
                # As predict does: one bad pair is listed (metrics.json "failed"), the others are still scored.
                failed.append({"name": sample.name, "reason": str(pair)})
            else:
                image, truth = pair
                scored.append(sample)
                prediction = predictor.predict(image, threshold)
                scorer.submit(functools.partial(score, sample.name, image, truth, prediction),
                              image.nbytes + truth.nbytes + prediction.nbytes)
            bar.update(1)
    result = confusion.compute(class_names=meta.class_names)
    # Images whose every pixel is ignored have no Dice; counting them as 1.0 would inflate the mean.
    result["image_dice"], result["image_dice_left_out"] = mean_image_score([row["dice"] for row in per_image])
    if not scored:
        raise DataError(f"{data}: none of the {len(samples)} {split} pairs could be read; first: {failed[0]['reason']}")
    result["split"] = split
    result["tta"] = bool(predictor.tta)
    result["tta_passes"] = predictor.tta_passes  # forward passes per image: per model 1, or its trained flips' views
    result["images"] = len(scored)
    result["failed"] = failed
    result["per_image"] = per_image
    result["confusion_matrix"] = confusion.matrix.tolist()
    write_report(out_dir, result, predictor, gallery.rows())
    result["out"] = str(out_dir)
    if keeper is not None:
        model = "(a Predictor in memory)" if isinstance(bundle, Predictor) else str(bundle)
        result["html"] = str(write_html_report(out_dir, result, colors=predictor.colors, thumbs=keeper.by_index(),
                                               run_dir=run_folder(bundle), model=model, data=str(data)))
    return EvaluationResult.from_dict(result)


def _pair_bytes(pair: tuple[np.ndarray, np.ndarray] | DataError) -> int:
    return 0 if isinstance(pair, DataError) else pair[0].nbytes + pair[1].nbytes


def run_folder(bundle: str | Path | Predictor) -> Path | None:
    """The training run folder a bundle sits in (its metrics.csv or curves.png beside it), else None."""
    if not isinstance(bundle, (str, Path)):
        return None  # a Predictor in memory, or several models
    folder = Path(bundle).parent
    return folder if (folder / "metrics.csv").is_file() or (folder / "curves.png").is_file() else None


def _read_pair(predictor: Predictor, sample: Sample, encoding: MaskEncoding) -> tuple[np.ndarray, np.ndarray]:
    """The image as an array and its mask as class indices; DataError naming the file when they do not fit."""
    meta = predictor.meta
    image = predictor.to_array(sample.image)
    truth = read_mask(sample.mask, encoding, meta.num_classes, meta.ignore_index)
    if truth.shape != image.shape[:2]:
        raise DataError(f"{sample.mask}: mask is {truth.shape[1]}x{truth.shape[0]} but image "
                        f"{sample.image.name} is {image.shape[1]}x{image.shape[0]}")
    return image, truth
