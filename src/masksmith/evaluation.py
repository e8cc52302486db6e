"""`masksmith.evaluate`: predict a labelled split at original resolution and score it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from masksmith.data.discover import Sample, discover, random_split_pool
from masksmith.data.encoding import MaskEncoding
from masksmith.data.masks import read_mask
from masksmith.ensemble import EnsemblePredictor, load_models, models_home
from masksmith.errors import DataError, MasksmithError
from masksmith.fileio import require_writable
from masksmith.html_report import ThumbnailKeeper, write_html_report
from masksmith.inference.pipeline import Prefetch, Writer, pipeline_depth
from masksmith.inference.work_budget import WorkBudget, check_file
from masksmith.metrics import ConfusionMatrix, mean_image_score, per_image_scores
from masksmith.predict import Predictor, check_threshold
from masksmith.report import write_report

GALLERY_EACH = 3


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
             html: bool = False, tta: bool = False, depth: int | None = None) -> dict[str, Any]:
    """Score a model on a labelled split; writes metrics.json, per_class.csv, plots, a gallery (html: report.html).

    Several models, or a cross-validation run folder, are scored as their ensemble (probabilities averaged).
    `tta`: each image's prediction averages the logits of its flips (as `predict --tta`; files only).
    `depth`: pairs read ahead and scorings waiting (masksmith.inference.pipeline; 0: one step after the other)."""
    check_threshold(threshold)
    in_memory = not isinstance(bundle, (str, Path, list, tuple))
    if in_memory and tta:
        raise MasksmithError("tta is an option of a model loaded from a file; give Predictor(..., tta=True) instead")
    predictor = bundle if in_memory else load_models(bundle, tta=tta)  # type: ignore[arg-type]
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
    gallery = _gallery_rows(predictor, scored, per_image, encoding, threshold)
    write_report(out_dir, result, predictor, gallery)
    result["out"] = str(out_dir)
    if keeper is not None:
        model = "(a Predictor in memory)" if isinstance(bundle, Predictor) else str(bundle)
        result["html"] = str(write_html_report(out_dir, result, colors=predictor.colors, thumbs=keeper.by_index(),
                                               run_dir=run_folder(bundle), model=model, data=str(data)))
    return result


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


def _gallery_rows(predictor: Predictor, samples: list[Sample], per_image: list[dict[str, Any]],
                  encoding: MaskEncoding, threshold: float | None) -> list[dict[str, Any]]:
    """Rows for the best and worst images by per-image Dice (re-read: keeping all images costs memory)."""
    order = sorted((i for i in range(len(per_image)) if per_image[i]["dice"] is not None),
                   key=lambda i: per_image[i]["dice"])
    worst = order[:GALLERY_EACH]
    best = [i for i in reversed(order[-GALLERY_EACH:]) if i not in worst]
    rows = []
    for label, indices in (("best", best), ("worst", worst)):
        for i in indices:
            sample = samples[i]
            image = predictor.to_array(sample.image)
            rows.append({
                "image": image,
                "truth": read_mask(sample.mask, encoding, predictor.meta.num_classes, predictor.meta.ignore_index),
                "prediction": predictor.predict(image, threshold),
                "caption": f"{label}: {sample.name} (Dice {per_image[i]['dice']:.3f})",
            })
    return rows
