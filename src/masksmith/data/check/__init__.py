"""Dataset check and fingerprint: read every file once (in worker processes) and report, never raise.

`check_dataset(root)` returns a `CheckReport`: counts, pairing, unreadable files, size mismatches,
image modes and sizes, class pixel frequencies, duplicates and leakage across splits. Each problem
has a severity ("error" or "warning"), a code, the file path(s) and a one-line message.

Problem codes (severity):
  layout                  (error)   discover could not pair the folders; (warning) a split was left out
  unpaired                (error)   an image without a mask, or a mask without an image, by name
  unreadable              (error)   broken or looping symbolic link, not a regular file, or a failed decode
  empty                   (error)   a 0-byte file
  truncated               (error)   the file ends before its pixel data does
  not_an_image            (error)   no known image format (e.g. a text file named .png)
  too_large               (error)   declares more pixels than masksmith.data.limits allows; never decoded
  size_mismatch           (error)   a mask whose width x height differs from its image's
  values_outside_classes  (error)   mask values that are neither a class index nor ignore_index
  mask_encoding           (error)   the mask encoding could not be detected (no class statistics then)
  leakage                 (error)   byte-identical images in two different splits (train/val/test)
  duplicate               (warning) byte-identical images within one split
  tiny_image              (warning) an image whose shorter side is below TINY_SIDE pixels
  class_never_seen        (warning) a class that occurs in no mask
  rare_class              (warning) a class in fewer than RARE_IMAGE_SHARE (1%) of the masks, or in at
                                    most RARE_MAX_IMAGES (2) masks: either rule makes it rare; a class
                                    found in every mask is never rare (tiny datasets)
  mixed_channels          (warning) grayscale and colour images in one dataset
  alpha_channel           (warning) images with an alpha channel (masksmith drops it)
  high_bit_depth          (warning) 16-bit or float images (masksmith reads 8 bits per channel)
  stray_binary_values     (warning) binary masks with values that are neither foreground nor background
                                    (they count as background): pixel and mask counts

Duplicates are found by a BLAKE2b hash of the file BYTES, not of the decoded pixels: it is several
times faster and needs no decode, but the same picture saved twice in different formats or with
different metadata is not caught.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from masksmith.data.check.files import default_workers, inspect_file, map_tasks
from masksmith.data.check.fingerprint import fingerprint, write_fingerprint
from masksmith.data.check.pairs import pairs_and_problems
from masksmith.data.check.report import CheckReport, Problem, display_path, print_report, safe_text
from masksmith.data.check.summary import evenly, summarise_classes, summarise_images
from masksmith.data.classes import class_list_name, find_class_file, read_class_names, without_named_void
from masksmith.data.discover import Discovery
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, ignore_index_problem
from masksmith.errors import ConfigError, DataError

__all__ = ["CheckReport", "Problem", "check_dataset", "display_path", "fingerprint", "print_report", "safe_text",
           "write_fingerprint"]

STATS_SAMPLE = 200  # images (evenly spread over the training split) used for mean / std


def check_dataset(
    root: str | Path,
    *,
    classes: str | Path | list[str] | None = None,
    foreground: int | None = None,
    mask_suffix: str | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    workers: int | None = None,
    progress: bool = True,
    palette: str | Path | None = None,
    ignore_color: tuple[int, int, int] | None = None,
    discovery: Discovery | None = None,
) -> CheckReport:
    """Check every image and mask under `root` and report the problems found; only raises for bad arguments.

    One pass: the data is discovered once (or `discovery`, the caller's discovery of `root` with the same
    mask_suffix, is used) and every file read once. The report carries what training needs so it decides
    nothing again: `report.pairs` (the samples per split), `report.labels` (the LabelSpec from resolve_labels;
    None when the masks could not be read), `report.pairs_read_cleanly()` and `fingerprint(report)`.
    """
    started = time.perf_counter()
    root = Path(root)
    if classes is None:
        classes = find_class_file(root)
    names = read_class_names(classes)
    # An ignore value that names the last class makes that class the void (data.classes' rule).
    names, void = without_named_void(names, ignore_index, class_list_name(classes))
    # A bad ignore value is a bad argument: raised here, before any file is read (the one rule, in encoding.py).
    problem = ignore_index_problem(ignore_index, len(names) if names else 0, names)
    if problem is not None:
        raise ConfigError(problem)
    workers = default_workers() if workers is None else max(1, int(workers))
    if not root.exists():
        raise DataError(f"{root}: folder not found")

    report = CheckReport(root=root, ignore_index=ignore_index, classes_given=names is not None, void=void)
    if isinstance(classes, (str, os.PathLike)):
        report.classes_file = Path(classes)
    if void is not None:
        classes = names  # the classes without the void, for every decision below
    splits, report.unpaired, report.problems = pairs_and_problems(root, mask_suffix, discovery)
    report.splits = {split: len(samples) for split, samples in splits.items()}
    report.pairs = splits

    image_paths = sorted({s.image for samples in splits.values() for s in samples})
    mask_paths = sorted({s.mask for samples in splits.values() for s in samples if s.mask is not None})
    stats_pool = sorted({s.image for s in splits.get("train") or [s for v in splits.values() for s in v]})
    stats_set = set(evenly(stats_pool, STATS_SAMPLE))
    tasks = [("image", p, p in stats_set) for p in image_paths] + [("mask", p, False) for p in mask_paths]
    results = {(r.kind, r.path): r for r in map_tasks(inspect_file, tasks, workers, progress, "checking files")}
    report.files_checked = len(results)
    for result in results.values():
        if not result.ok:
            report.problems.append(Problem("error", result.code or "unreadable", [result.path],
                                           result.message or f"{result.path}: cannot read"))

    summarise_images(report, splits, results)
    encoding_options: dict[str, Any] = {"foreground": foreground}
    # Passed only when given, so check works with masks.py versions that predate colour masks.
    if palette is not None:
        encoding_options["palette"] = palette
    if ignore_color is not None:
        encoding_options["ignore_color"] = ignore_color
    summarise_classes(report, splits, results, classes, encoding_options, workers, progress)
    report.seconds = time.perf_counter() - started
    return report


