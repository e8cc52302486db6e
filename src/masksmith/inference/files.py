"""What both prediction engines (local `predict_files` and the Ray one) share around the model.

The plan (which images, under which output names, which are already done), decoding a batch,
encoding and writing one prediction, and the failures file. Both engines call these same functions,
so for the same images and batches they write the same bytes.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from masksmith.bundle import BundleMeta
from masksmith.core.fileio import atomic_path, refuse_overwrite
from masksmith.data.encoding import MaskEncoding
from masksmith.data.images import read_image
from masksmith.data.masks import write_mask
from masksmith.errors import MasksmithError
from masksmith.inference.inputs import InputImage, expand_inputs, manifest_inputs
from masksmith.visualize import overlay, save_image, save_mask_png

MASK_FORMATS = ("palette", "dataset")
FAILURES_NAME = "failures.csv"
OVERLAY_DIR = "overlays"

# Images per forward pass when predicting files; predict_files, the Ray engine and the CLI all default to it.
PREDICT_BATCH_SIZE = 4


def check_mask_format(mask_format: str) -> None:
    """Raise a MasksmithError for a mask format other than palette or dataset."""
    if mask_format not in MASK_FORMATS:
        raise MasksmithError(f"mask format must be 'palette' or 'dataset', got {mask_format!r}")


def mask_target(out_dir: Path, relative: Path) -> Path:
    """Where the mask of an input with this relative path goes: OUT/<relative path with .png>."""
    return Path(out_dir) / relative.with_suffix(".png")


def overlay_target(out_dir: Path, relative: Path) -> Path:
    """Where its overlay goes: OUT/overlays/<relative path with .jpg>."""
    return Path(out_dir) / OVERLAY_DIR / relative.with_suffix(".jpg")


@dataclass
class PredictionPlan:
    """The images still to predict, the entries that cannot be read, and the ones --resume skips."""

    items: list[InputImage]
    failed: list[tuple[Path, str]]
    skipped: list[Path] = field(default_factory=list)


def plan_predictions(inputs: Sequence[str | Path], out_dir: str | Path, *, overlay_images: bool = False,
                     resume: bool = False) -> PredictionPlan:
    """Expand the inputs, refuse outputs that clash or overwrite an input, and (resume) drop finished ones."""
    out_dir = Path(out_dir)
    items, failed = expand_inputs(list(inputs), exclude=out_dir)
    owners: dict[Path, Path] = {}
    for item in items:
        name = item.relative.with_suffix(".png")
        if name in owners:
            # Both would be written to the same file; refuse rather than overwrite one with the other.
            raise MasksmithError(f"{item.path} and {owners[name]} would both be written as {name}; "
                                 "predict them into separate --out folders")
        owners[name] = item.path
    targets = [mask_target(out_dir, item.relative) for item in items]
    if overlay_images:
        targets += [overlay_target(out_dir, item.relative) for item in items]
    # e.g. --out INPUT_DIR with PNG inputs: masks would replace the photos; a manifest named failures.csv.
    refuse_overwrite([item.path for item in items] + manifest_inputs(list(inputs)),
                     targets + [out_dir / FAILURES_NAME])
    plan = PredictionPlan(items, failed)
    if resume:
        todo = []
        for item in items:
            done = mask_target(out_dir, item.relative).is_file() and (
                not overlay_images or overlay_target(out_dir, item.relative).is_file())
            (plan.skipped if done else todo).append(item.path if done else item)
        plan.items = todo
    return plan


def read_batch(items: Iterable[InputImage], channels: int, admit: Callable[[Path], None] | None = None
               ) -> tuple[list[np.ndarray], list[InputImage], list[tuple[Path, str]]]:
    """Decode a batch: (arrays, the items they belong to, [(path, reason)] for the unreadable ones).

    `admit(path)` runs before a file is decoded and may refuse it with a MasksmithError (the work budget).
    """
    arrays, readable, failed = [], [], []
    for item in items:
        try:
            if admit is not None:
                admit(item.path)
            arrays.append(read_image(item.path, channels=channels))
            readable.append(item)
        except MasksmithError as error:
            failed.append((item.path, str(error)))
    return arrays, readable, failed


def write_prediction(meta: BundleMeta, mask: np.ndarray, image: np.ndarray, out_dir: Path, relative: Path, *,
                     mask_format: str = "palette", overlay_images: bool = False) -> Path:
    """Encode and write one predicted mask (and its overlay) at the input's relative path; returns the mask path.

    "palette": a P-mode PNG of class indices; "dataset": the training masks' own encoding.
    """
    target = mask_target(out_dir, relative)
    colors = np.array(meta.colors, dtype=np.uint8)
    if mask_format == "dataset":
        write_mask(target, mask, MaskEncoding.from_dict(meta.mask_encoding), meta.ignore_index)
    else:
        save_mask_png(mask, target, colors, ignore_index=meta.ignore_index)
    if overlay_images:
        save_image(overlay(image, mask, colors, ignore_index=meta.ignore_index), overlay_target(out_dir, relative))
    return target


def write_failures(out_dir: str | Path, failed: Sequence[tuple[Path, str]]) -> Path | None:
    """Write OUT/failures.csv (path, reason; sorted by path) atomically, or remove a stale one when none failed."""
    target = Path(out_dir) / FAILURES_NAME
    if not failed:
        if target.is_file() and not target.is_symlink():
            target.unlink()  # from an earlier run whose failures have now been predicted
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    for path, reason in sorted(failed, key=lambda row: str(row[0])):
        writer.writerow([str(path), reason])
    # Undecodable file-name bytes become \xNN escapes: the file stays valid UTF-8 for any CSV reader.
    with atomic_path(target) as tmp:
        tmp.write_bytes(buffer.getvalue().encode("utf-8", "backslashreplace"))
    return target
