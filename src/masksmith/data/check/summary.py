"""Dataset statistics from the per-file results: images (sizes, modes, duplicates) and classes (via resolve_labels)."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from masksmith.data.check.files import ClassCount, FileResult, count_classes, map_tasks
from masksmith.data.check.report import LISTED, CheckReport, Problem, display_path, is_rare
from masksmith.data.detect import StrayMaskValuesWarning
from masksmith.data.discover import Sample
from masksmith.data.encoding import MaskEncoding
from masksmith.data.images import LOSSY_FORMATS
from masksmith.data.labels import ClassCountError, resolve_labels
from masksmith.data.masks import binary_strays, decode_mask
from masksmith.data.validate import size_mismatch
from masksmith.errors import DataError

TINY_SIDE = 32  # a 4-level U-Net halves the input 4 times; below 32 px there is almost nothing left
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@dataclass(frozen=True)
class MaskCounts:
    """One mask's pixels and runs (files.structure_runs) per class, and its ignored pixels."""

    pixels: np.ndarray
    ignored: int
    runs: np.ndarray


def evenly(items: list[Path], count: int) -> list[Path]:
    """Up to `count` items spread evenly over the list (deterministic)."""
    if len(items) <= count:
        return list(items)
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


def _decode_values(keys: list[int], encoding: MaskEncoding, num_classes: int, ignore_index: int) -> dict[int, int]:
    """Class index for each distinct raw value (-1: not a class); only for encodings that map values one by one."""
    if not keys:
        return {}
    grid = np.array(keys, dtype=np.int64)[None, :]  # a 1 x K "image" whose pixels are the distinct values
    try:
        decoded = decode_mask(grid, encoding, num_classes, ignore_index).reshape(-1)
        return {k: int(c) for k, c in zip(keys, decoded.tolist())}
    except DataError:
        pass  # some value is outside the classes: find which, one value at a time
    classes: dict[int, int] = {}
    for index, key in enumerate(keys):
        try:
            classes[key] = int(decode_mask(grid[:, index:index + 1], encoding, num_classes, ignore_index)[0, 0])
        except DataError:
            classes[key] = -1
    return classes


def _shown(paths: Iterable[Path], limit: int = 3) -> str:
    """'a.png, b.png, … and N more' with printable names."""
    items = [display_path(p) for p in paths]
    text = ", ".join(items[:limit])
    return text + (f", … and {len(items) - limit} more" if len(items) > limit else "")


def summarise_images(report: CheckReport, splits: dict[str, list[Sample]],
                      results: dict[tuple[str, Path], FileResult]) -> None:
    """Modes, channels, sizes, mean / std, tiny images, size mismatches and duplicates."""
    modes: Counter[str] = Counter()
    channels: dict[int, list[Path]] = {}
    sizes: Counter[tuple[int, int]] = Counter()
    alpha: list[Path] = []
    wide: list[tuple[Path, int]] = []
    sums = squares = None
    pixels = 0
    stats_images = 0
    readable = [r for (kind, _), r in sorted(results.items()) if kind == "image" and r.ok]
    dominant = Counter(r.channels for r in readable).most_common(1)[0][0] if readable else None
    for result in readable:
        assert result.size is not None and result.channels is not None
        modes[result.mode or "?"] += 1
        channels.setdefault(result.channels, []).append(result.path)
        sizes[result.size] += 1
        if (result.mode or "") in ALPHA_MODES:
            alpha.append(result.path)
        if result.bits > 8:
            wide.append((result.path, result.bits))
        if min(result.size) < TINY_SIDE:
            report.problems.append(Problem(
                "warning", "tiny_image", [result.path],
                f"{result.path}: image is only {result.size[0]}x{result.size[1]} pixels "
                f"(shorter side below {TINY_SIDE})"))
        if result.stats is not None and result.channels == dominant:
            s, q, n = result.stats
            sums = np.array(s, np.float64) if sums is None else sums + np.array(s, np.float64)
            squares = np.array(q, np.float64) if squares is None else squares + np.array(q, np.float64)
            pixels += n
            stats_images += 1
    report.image_modes = dict(modes.most_common())
    report.image_channels = {c: len(paths) for c, paths in sorted(channels.items())}
    report.image_sizes = dict(sizes.most_common())
    if sums is not None and squares is not None and pixels:
        mean = sums / pixels / 255.0
        var = np.maximum(squares / pixels / 255.0**2 - mean**2, 0.0)
        report.mean = [round(float(v), 5) for v in mean]
        report.std = [round(float(v), 5) for v in np.sqrt(var)]
        report.stats_images = stats_images

    if len(channels) > 1:
        minority = min(channels.items(), key=lambda item: len(item[1]))
        kind = "grayscale" if minority[0] == 1 else "colour"
        report.problems.append(Problem(
            "warning", "mixed_channels", minority[1],
            f"{len(minority[1])} of {len(readable)} images are {kind} ({_shown(minority[1])}); "
            "grayscale and colour images together are all read with the same channel count"))
    if alpha:
        report.problems.append(Problem(
            "warning", "alpha_channel", alpha,
            f"{len(alpha)} image(s) have an alpha channel, which masksmith drops: {_shown(alpha)}"))
    if wide:
        paths = [p for p, _ in wide]
        report.problems.append(Problem(
            "warning", "high_bit_depth", paths,
            f"{len(paths)} image(s) store {max(b for _, b in wide)}-bit samples; masksmith reads 8 bits "
            f"per channel (wide grayscale is scaled by each image's own maximum): {_shown(paths)}"))

    # Size mismatches, per pair.
    for samples in splits.values():
        for s in samples:
            image = results.get(("image", s.image))
            mask = results.get(("mask", s.mask)) if s.mask is not None else None
            if image and mask and image.ok and mask.ok:
                assert image.size and mask.size
                problem = size_mismatch(s, image.size, mask.size)
                if problem is not None:
                    report.problems.append(Problem("error", "size_mismatch", [s.mask, s.image], problem))

    # Duplicates by file bytes; the same content in two splits is leakage.
    groups: dict[str, dict[Path, set[str]]] = {}
    for split, samples in splits.items():
        for s in samples:
            image = results.get(("image", s.image))
            if image and image.ok and image.digest:
                groups.setdefault(image.digest, {}).setdefault(s.image, set()).add(split)
    for members in groups.values():
        where = sorted(set().union(*members.values()))
        paths = sorted(members)
        if len(where) > 1:
            listed = "; ".join(f"{display_path(p)} ({', '.join(sorted(members[p]))})" for p in paths[:LISTED])
            report.problems.append(Problem(
                "error", "leakage", paths,
                f"identical image in {' and '.join(where)}: {listed}"
                + ("" if len(paths) > 1 else " (the same file is listed in both)")))
        elif len(paths) > 1:
            hint = " (a random train/val split may put copies on both sides)" if where == ["all"] else ""
            report.problems.append(Problem(
                "warning", "duplicate", paths,
                f"{len(paths)} identical images in {where[0]}: {_shown(paths, LISTED)}{hint}"))


def _detect(report: CheckReport, readable: list[Path], classes: Any, encoding_options: dict[str, Any],
            values_seen: set[int] | None) -> tuple[MaskEncoding, int, list[str]] | None:
    """(encoding, num_classes, class names) from resolve_labels, as training decides them; None (and a problem)."""
    try:
        with warnings.catch_warnings():
            # detection warns about stray binary values in its sample; every mask is counted below.
            warnings.simplefilter("ignore", StrayMaskValuesWarning)
            spec = resolve_labels(readable, classes=classes, ignore_index=report.ignore_index,
                                  source=report.classes_file, values_seen=values_seen, **encoding_options)
    except DataError as exc:
        # A class list that disagrees with the masks is the class file's problem; anything else the masks'.
        blamed = report.classes_file if isinstance(exc, ClassCountError) and report.classes_file else readable[0].parent
        report.problems.append(Problem("error", "mask_encoding", [blamed], str(exc)))
        return None
    report.labels = spec
    return spec.encoding, spec.num_classes, list(spec.class_names)


def _counts_by_value(report: CheckReport, readable: list[Path], results: dict[tuple[str, Path], FileResult],
                     encoding: MaskEncoding, num_classes: int) -> dict[Path, MaskCounts]:
    """Per-mask class pixels and runs from the raw values' counts: exact where decoding maps each value alone."""
    ignore_index = report.ignore_index
    keys_per_mask = {p: results[("mask", p)].values.tolist() for p in readable}  # type: ignore[union-attr]
    all_keys = sorted({k for keys in keys_per_mask.values() for k in keys})
    value_class = _decode_values(all_keys, encoding, num_classes, ignore_index)
    counts: dict[Path, MaskCounts] = {}
    for path in readable:
        result = results[("mask", path)]
        assert result.counts is not None and result.runs is not None
        pixels = np.zeros(num_classes, np.int64)
        runs = np.zeros(num_classes, np.int64)
        ignored = 0
        bad: list[Any] = []
        for key, count, key_runs in zip(keys_per_mask[path], result.counts.tolist(), result.runs.tolist()):
            cls = value_class[key]
            if cls < 0:
                bad.append(key)
            elif cls == ignore_index and encoding.kind == "index":
                ignored += count
            else:
                # Two raw values of one class side by side count as two runs: rare, and only narrows the width.
                pixels[cls] += count
                runs[cls] += key_runs
        if bad:
            shown = ", ".join(str(v) for v in bad[:10]) + (f", … and {len(bad) - 10} more" if len(bad) > 10 else "")
            source = f" of the {num_classes} classes given" if report.classes_given else f" ({num_classes} classes)"
            report.problems.append(Problem(
                "error", "values_outside_classes", [path],
                f"{path}: mask values [{shown}] are outside the classes 0..{num_classes - 1}{source} "
                f"and are not ignore_index {ignore_index}"))
        counts[path] = MaskCounts(pixels, ignored, runs)
    return counts


def _report_strays(report: CheckReport, readable: list[Path], results: dict[tuple[str, Path], FileResult],
                   encoding: MaskEncoding) -> None:
    """One warning for binary masks whose values are neither foreground nor background, with the counts."""
    found = []
    for path in readable:
        result = results[("mask", path)]
        pixels, values = binary_strays(result.values, result.counts, encoding)  # type: ignore[arg-type]
        if pixels:
            found.append((path, pixels, values))
    if not found:
        return
    paths = [path for path, _, _ in found]
    values = sorted({v for _, _, vs in found for v in vs})
    shown = ", ".join(str(v) for v in values[:10]) + (", …" if len(values) > 10 else "")
    report.problems.append(Problem(
        "warning", "stray_binary_values", paths,
        f"{sum(p for _, p, _ in found)} pixels in {len(paths)} of {len(readable)} masks have values ({shown}) that "
        f"are neither the foreground {encoding.foreground} nor the background {encoding.background}; they count "
        f"as background: {_shown(paths)}"))


def _counts_by_decoding(report: CheckReport, readable: list[Path], encoding: MaskEncoding, num_classes: int,
                        workers: int, progress: bool) -> dict[Path, MaskCounts]:
    """Per-mask class pixels and runs from read_mask itself (colour and lossy masks: decoding looks at neighbours)."""
    tasks = [(path, encoding, num_classes, report.ignore_index) for path in readable]
    counts: dict[Path, MaskCounts] = {}
    lossy: list[ClassCount] = []
    for result in map_tasks(count_classes, tasks, workers, progress, "decoding masks"):
        if result.pixels is None:
            report.problems.append(Problem("error", result.code or "unreadable", [result.path],
                                           result.message or f"{result.path}: cannot decode mask"))
            continue
        assert result.runs is not None
        counts[result.path] = MaskCounts(result.pixels, result.ignored, result.runs)
        if result.lossy_notes:
            lossy.append(result)
    if lossy:
        paths = [r.path for r in lossy]
        report.problems.append(Problem(
            "warning", "lossy_mask", paths,
            f"{len(paths)} mask(s) are lossy (e.g. JPEG): off-class pixels were snapped to the nearest class; "
            f"first: {lossy[0].lossy_notes[0]}"))
    return counts


def summarise_classes(report: CheckReport, splits: dict[str, list[Sample]],
                       results: dict[tuple[str, Path], FileResult], classes: Any,
                       encoding_options: dict[str, Any], workers: int, progress: bool) -> None:
    """Mask encoding, class pixel and image counts per split, out-of-class values, rare classes."""
    readable = sorted(p for (kind, p), r in results.items() if kind == "mask" and r.ok)
    if not readable:
        return
    # Lossless gray masks decode value by value: their histograms alone give every class pixel count.
    gray_lossless = (all(results[("mask", p)].format not in LOSSY_FORMATS for p in readable)
                     and all(results[("mask", p)].values.ndim == 1 for p in readable))  # type: ignore[union-attr]
    values_seen = ({k for p in readable for k in results[("mask", p)].values.tolist()}  # type: ignore[union-attr]
                   if gray_lossless else None)
    detected = _detect(report, readable, classes, encoding_options, values_seen)
    if detected is None:
        return
    encoding, num_classes, names = detected
    # Decoding maps each raw value on its own unless masks are colour or lossy (JPEG): then decode for real.
    by_value = encoding.kind in ("index", "binary") and not encoding.lossy and gray_lossless
    report.encoding, report.class_names = encoding, list(names)

    if by_value:
        counts = _counts_by_value(report, readable, results, encoding, num_classes)
        _report_strays(report, readable, results, encoding)
    else:
        counts = _counts_by_decoding(report, readable, encoding, num_classes, workers, progress)
    where_seen: dict[int, list[Path]] = {}
    for path, mask_counts in sorted(counts.items()):
        for cls in np.flatnonzero(mask_counts.pixels).tolist():
            where_seen.setdefault(cls, []).append(path)

    overall_pixels = np.zeros(num_classes, np.int64)
    overall_runs = np.zeros(num_classes, np.int64)
    overall_images = np.zeros(num_classes, np.int64)
    counted = 0
    ignored_total = 0
    for split, samples in splits.items():
        split_pixels = np.zeros(num_classes, np.int64)
        split_runs = np.zeros(num_classes, np.int64)
        split_images = np.zeros(num_classes, np.int64)
        split_counted = split_ignored = 0
        for s in samples:
            mask_counts = counts.get(s.mask) if s.mask is not None else None
            if mask_counts is not None:
                split_pixels += mask_counts.pixels
                split_runs += mask_counts.runs
                split_images += mask_counts.pixels > 0
                split_counted += 1
                split_ignored += mask_counts.ignored
        report.class_pixels[split] = split_pixels.tolist()
        report.class_runs[split] = split_runs.tolist()
        report.class_images[split] = split_images.tolist()
        report.masks_counted[split] = split_counted
        report.ignored_pixels[split] = split_ignored
        overall_pixels += split_pixels
        overall_runs += split_runs
        overall_images += split_images
        counted += split_counted
        ignored_total += split_ignored
    report.class_pixels["overall"] = overall_pixels.tolist()
    report.class_runs["overall"] = overall_runs.tolist()
    report.class_images["overall"] = overall_images.tolist()
    report.masks_counted["overall"] = counted
    report.ignored_pixels["overall"] = ignored_total

    classes_file = [report.classes_file or readable[0].parent]
    for index, name in enumerate(names):
        images = int(overall_images[index])
        if counted and images == 0:
            report.problems.append(Problem(
                "warning", "class_never_seen", classes_file,
                f"class {index} {name!r} occurs in none of the {counted} masks"))
        elif counted and is_rare(images, counted):
            seen = where_seen.get(index, [])
            report.problems.append(Problem(
                "warning", "rare_class", seen,
                f"class {index} {name!r} occurs in only {images} of {counted} masks "
                f"({100 * images / counted:.1f}%): {_shown(seen)}"))


