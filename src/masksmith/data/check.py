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

import hashlib
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm.auto import tqdm

from masksmith.data.classes import find_class_file, read_class_names
from masksmith.data.discover import (
    MASK_SUFFIXES,
    Sample,
    discover_dataset,
    entry_problem,
    left_out_message,
)
from masksmith.data.encoding import ignore_index_problem
from masksmith.data.labels import ClassCountError, LabelSpec, resolve_labels
from masksmith.data.limits import ImageTooLarge, max_image_pixels, open_image, set_max_image_pixels
from masksmith.data.detect import StrayMaskValuesWarning
from masksmith.data.images import failure_code, read_image
from masksmith.data.masks import MaskEncoding, binary_strays, decode_mask, read_mask, read_mask_values
from masksmith.errors import ConfigError, DataError
from masksmith.fileio import write_text_atomic

Severity = Literal["error", "warning"]

TINY_SIDE = 32  # a 4-level U-Net halves the input 4 times; below 32 px there is almost nothing left
RARE_IMAGE_SHARE = 0.01  # rare: in fewer than 1% of the masks ...
RARE_MAX_IMAGES = 2  # ... or in at most 2 masks (the rule that matters for small datasets)
STATS_SAMPLE = 200  # images (evenly spread over the training split) used for mean / std
CHUNKSIZE = 16  # files per worker task: large enough to hide inter-process overhead
PARALLEL_MIN_FILES = 32  # below this, starting worker processes costs more than it saves
LISTED = 10  # files listed per problem code in the printed report
HASH = "blake2b-128 of the file bytes"
NPY_SUFFIX = ".npy"
_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_BITS = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


def display_path(path: str | os.PathLike) -> str:
    """A printable, JSON-safe form of a path: bytes that are not UTF-8 become \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def safe_text(text: str) -> str:
    """`text` with undecodable file-name bytes (lone surrogates) shown as \\xNN escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


@dataclass
class Problem:
    """One thing wrong with the data: severity, code, the files involved and a one-line message."""

    severity: Severity
    code: str
    paths: list[Path]
    message: str

    def __post_init__(self) -> None:
        # Messages quote file names; undecodable bytes in them must not break a print or json.dump.
        self.message = safe_text(self.message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; paths made printable."""
        return {
            "severity": self.severity,
            "code": self.code,
            "paths": [display_path(p) for p in self.paths],
            "message": safe_text(self.message),
        }


@dataclass
class CheckReport:
    """The result of `check_dataset`: statistics of the data and the problems found."""

    root: Path
    splits: dict[str, int] = field(default_factory=dict)  # pairs per split
    unpaired: dict[str, dict[str, list[Path]]] = field(default_factory=dict)  # split -> images/masks
    encoding: MaskEncoding | None = None
    labels: LabelSpec | None = None  # what resolve_labels decided (None when the masks could not be read)
    class_names: list[str] = field(default_factory=list)
    ignore_index: int = 255
    classes_given: bool = False
    classes_file: Path | None = None
    class_pixels: dict[str, list[int]] = field(default_factory=dict)  # split (and "overall") -> per class
    class_images: dict[str, list[int]] = field(default_factory=dict)  # masks in which each class occurs
    masks_counted: dict[str, int] = field(default_factory=dict)  # masks that went into the class counts
    ignored_pixels: dict[str, int] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)
    image_channels: dict[int, int] = field(default_factory=dict)
    image_sizes: dict[tuple[int, int], int] = field(default_factory=dict)  # (width, height) -> images
    mean: list[float] | None = None
    std: list[float] | None = None
    stats_images: int = 0
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        """Problems of severity "error"."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Problems of severity "warning"."""
        return [p for p in self.problems if p.severity == "warning"]

    def by_code(self, code: str) -> list[Problem]:
        """The problems with this code."""
        return [p for p in self.problems if p.code == code]

    def exit_code(self, strict: bool = False) -> int:
        """0 when clean, 2 when any error, 1 when only warnings and `strict`, else 0."""
        if self.errors:
            return 2
        return 1 if strict and self.warnings else 0

    @property
    def num_classes(self) -> int:
        """Number of classes the masks were decoded into (0 when the encoding is unknown)."""
        return len(self.class_names)

    def class_status(self, index: int) -> str:
        """"never seen", "rare" or "" for class `index`, by the module's rules."""
        images = self.class_images.get("overall")
        total = self.masks_counted.get("overall", 0)
        if not images or total == 0:
            return ""
        count = images[index]
        if count == 0:
            return "never seen"
        return "rare" if is_rare(count, total) else ""

    def never_seen(self) -> list[str]:
        """Names of the classes that occur in no mask."""
        return [n for i, n in enumerate(self.class_names) if self.class_status(i) == "never seen"]

    def rare_classes(self) -> list[str]:
        """Names of the classes that occur in very few masks (see `is_rare`)."""
        return [n for i, n in enumerate(self.class_names) if self.class_status(i) == "rare"]

    def pixel_shares(self, split: str = "overall") -> list[float]:
        """Each class's share of the labelled (not ignored) pixels of `split`."""
        pixels = self.class_pixels.get(split)
        if not pixels:
            return []
        total = sum(pixels)
        return [p / total if total else 0.0 for p in pixels]

    def size_summary(self) -> dict[str, Any]:
        """min / median / max of width and height over readable images, and the most common sizes."""
        if not self.image_sizes:
            return {"images": 0}
        sizes = list(self.image_sizes.items())
        counts = [c for _, c in sizes]
        widths = np.repeat([s[0] for s, _ in sizes], counts)
        heights = np.repeat([s[1] for s, _ in sizes], counts)

        def spread(values: np.ndarray) -> dict[str, float]:
            return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}

        common = sorted(sizes, key=lambda item: (-item[1], item[0]))[:5]
        return {
            "images": int(sum(counts)),
            "width": spread(widths),
            "height": spread(heights),
            "common": [{"width": w, "height": h, "count": c} for (w, h), c in common],
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything in JSON-ready form (paths as printable strings)."""
        shares = self.pixel_shares()
        classes = []
        for index, name in enumerate(self.class_names):
            classes.append({
                "index": index,
                "name": safe_text(name),
                "pixels": self.class_pixels.get("overall", [0] * self.num_classes)[index],
                "pixel_share": shares[index] if shares else 0.0,
                "images": self.class_images.get("overall", [0] * self.num_classes)[index],
                "status": self.class_status(index),
                "per_split": {
                    split: {"pixels": self.class_pixels[split][index], "images": self.class_images[split][index]}
                    for split in self.class_pixels if split != "overall"
                },
            })
        codes = Counter(p.code for p in self.problems)
        return {
            "root": display_path(self.root),
            "seconds": round(self.seconds, 3),
            "files_checked": self.files_checked,
            "splits": dict(self.splits),
            "unpaired": {
                split: {role: [display_path(p) for p in paths] for role, paths in roles.items()}
                for split, roles in self.unpaired.items()
            },
            "encoding": self.encoding.to_dict() if self.encoding is not None else None,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "classes": classes,
            "never_seen": [safe_text(n) for n in self.never_seen()],
            "rare": [safe_text(n) for n in self.rare_classes()],
            "masks_counted": dict(self.masks_counted),
            "ignored_pixels": dict(self.ignored_pixels),
            "images": {
                "modes": dict(self.image_modes),
                "channels": {str(k): v for k, v in sorted(self.image_channels.items())},
                "sizes": self.size_summary(),
            },
            "mean": self.mean,
            "std": self.std,
            "stats_images": self.stats_images,
            "duplicate_hash": HASH,
            "problems": [p.to_dict() for p in self.problems],
            "summary": {"errors": len(self.errors), "warnings": len(self.warnings), "by_code": dict(codes)},
        }


def is_rare(count: int, total: int) -> bool:
    """A class in `count` of `total` masks is rare below 1% of them or at 2 masks or fewer (never if in all)."""
    return 0 < count < total and (count <= RARE_MAX_IMAGES or count < RARE_IMAGE_SHARE * total)


# --- per-file work (runs in worker processes) -------------------------------------------------


@dataclass
class _FileResult:
    """The small summary of one file that travels back from a worker."""

    kind: str
    path: Path
    code: str | None = None
    message: str | None = None
    size: tuple[int, int] | None = None  # (width, height) as read, EXIF orientation applied
    mode: str | None = None
    format: str | None = None  # PIL's format name (JPEG masks are decoded as lossy)
    bits: int = 8
    channels: int | None = None
    digest: str | None = None
    stats: tuple[list[int], list[int], int] | None = None  # per-channel sum, sum of squares, pixels
    values: np.ndarray | None = None  # distinct raw mask values (K,), or colours (K, C)
    counts: np.ndarray | None = None  # pixels per distinct value

    @property
    def ok(self) -> bool:
        return self.code is None


def _reason(exc: BaseException) -> str:
    """An exception as one line of text."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _bit_depth(image: Image.Image) -> int:
    """Bits per sample as stored in the file (PIL silently reads 16-bit RGB(A) as 8-bit)."""
    if image.mode in _WIDE_BITS:
        return _WIDE_BITS[image.mode]
    bits = 8
    tag = getattr(image, "tag_v2", None)
    if tag is not None:
        stored = tag.get(258)  # TIFF BitsPerSample
        if isinstance(stored, (tuple, list)) and stored:
            bits = max(bits, max(int(b) for b in stored))
        elif isinstance(stored, int):
            bits = max(bits, stored)
    for tile in image.tile or []:
        args = tile.args if hasattr(tile, "args") else tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")
        if ";16" in rawmode:
            bits = max(bits, 16)
    return bits


def _read_header(result: _FileResult) -> None:
    """Size-0, format and decompression-bomb checks from the header, before any pixel is decoded."""
    path, kind = result.path, result.kind
    size_bytes = os.stat(path).st_size
    if size_bytes == 0:
        result.code, result.message = "empty", f"{path}: {kind} file is empty (0 bytes)"
        return
    if path.suffix.lower() == NPY_SUFFIX:  # a NumPy array, not a PIL format: masks.py reads and checks it
        result.mode = result.format = "npy"
        return
    try:
        with open_image(path, kind) as image:
            result.mode, result.format = image.mode, image.format
            result.bits = _bit_depth(image)
    except ImageTooLarge as exc:
        result.code, result.message = "too_large", str(exc)
    except UnidentifiedImageError:
        result.code = "not_an_image"
        result.message = f"{path}: not an image file ({size_bytes} bytes in no known image format)"


def _classify_read_error(result: _FileResult, exc: DataError) -> None:
    """Record a read failure with its one-line message and the code the reader gave it."""
    result.code, result.message = getattr(exc, "code", "unreadable"), str(exc)


def _file_digest(path: Path) -> str:
    """BLAKE2b-128 of the file bytes, read in chunks so a huge file never sits in memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _inspect_image(result: _FileResult, want_stats: bool) -> None:
    """Hash, fully decode (so truncation shows), and optionally sum pixels for mean / std."""
    result.digest = _file_digest(result.path)
    try:
        array = read_image(result.path)
    except DataError as exc:
        _classify_read_error(result, exc)
        return
    height, width, channels = array.shape
    result.size, result.channels = (width, height), channels
    if want_stats:
        flat = array.reshape(-1, channels)
        sums = flat.sum(axis=0, dtype=np.uint64)
        squares = (flat.astype(np.uint32) ** 2).sum(axis=0, dtype=np.uint64)
        result.stats = ([int(v) for v in sums], [int(v) for v in squares], int(flat.shape[0]))


def _inspect_mask(result: _FileResult, want_stats: bool) -> None:
    """Raw mask values and their pixel counts; decoding to classes happens once, in the parent."""
    try:
        values = read_mask_values(result.path)
    except DataError as exc:
        _classify_read_error(result, exc)
        return
    result.size = (int(values.shape[1]), int(values.shape[0]))
    if values.ndim == 2 and values.dtype == np.uint8:
        counts = np.bincount(values.ravel(), minlength=256)
        distinct = np.flatnonzero(counts)
        result.values, result.counts = distinct, counts[distinct].astype(np.int64)
    elif values.ndim == 2:
        result.values, counts = np.unique(values, return_counts=True)
        result.counts = counts.astype(np.int64)
    else:  # several values per pixel (colour masks): one row per distinct colour
        rows = values.reshape(-1, values.shape[2])
        result.values, counts = np.unique(rows, axis=0, return_counts=True)
        result.counts = counts.astype(np.int64)


def _inspect(task: tuple[str, Path, bool]) -> _FileResult:
    """Check one file; every failure becomes a coded result, never an exception."""
    kind, path, want_stats = task
    result = _FileResult(kind, path)
    try:
        _read_header(result)  # the pixel limit (masksmith.data.limits) is applied here, before any decode
        if result.ok:
            (_inspect_image if kind == "image" else _inspect_mask)(result, want_stats)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the check of a thousand others
        reason = _reason(exc)
        result.code, result.message = failure_code(exc), f"{path}: cannot read {kind}: {reason}"
    if not result.ok:
        result.values = result.counts = result.stats = None
    return result


def _map(function: Callable[[Any], Any], tasks: list[Any], workers: int, progress: bool, desc: str) -> Iterator[Any]:
    """`function` over the tasks, in order; in worker processes when there are enough tasks to pay for them."""
    bar = tqdm(total=len(tasks), desc=desc, unit="file", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(tasks) < PARALLEL_MIN_FILES:
            for task in tasks:
                yield function(task)
                bar.update()
            return
        try:
            # Workers apply the parent's pixel limit, whether they were forked or spawned.
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), initializer=set_max_image_pixels,
                                     initargs=(max_image_pixels(),)) as pool:
                for result in pool.map(function, tasks, chunksize=CHUNKSIZE):
                    yield result
                    bar.update()
        except BrokenProcessPool:
            # A decoder crashed or the system killed a worker for memory: no Python exception to report.
            raise DataError(
                f"a worker process died while {desc} (out of memory, or a decoder crashed on a file); "
                "run again with workers=1 to see which file") from None
    finally:
        bar.close()


@dataclass
class _ClassCount:
    """Pixels per class of one mask decoded the way training decodes it (the canonical `read_mask`)."""

    path: Path
    pixels: np.ndarray | None = None
    ignored: int = 0
    code: str | None = None
    message: str | None = None
    lossy_notes: list[str] = field(default_factory=list)


def _count_classes(task: tuple[Path, MaskEncoding, int, int]) -> _ClassCount:
    """Decode one mask with read_mask and count its classes; failures and snapping notes are recorded."""
    path, encoding, num_classes, ignore_index = task
    count = _ClassCount(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decoded = read_mask(path, encoding, num_classes, ignore_index)
            histogram = np.bincount(decoded.ravel(), minlength=256)
            count.pixels = histogram[:num_classes].astype(np.int64)
            count.ignored = int(histogram[ignore_index]) if ignore_index < len(histogram) else 0
        except DataError as exc:
            count.code, count.message = "values_outside_classes", str(exc)
        except Exception as exc:  # noqa: BLE001 - reported per file like every other failure
            count.code, count.message = "unreadable", f"{path}: cannot decode mask: {_reason(exc)}"
    count.lossy_notes = [str(w.message) for w in caught if "snapped" in str(w.message)]
    return count


# --- pairing ---------------------------------------------------------------------------------


def _broken_partner(stem: str, role: str, suffixes: tuple[str, ...], broken: dict[str, Path]) -> Path | None:
    """The unreadable entry (broken link, folder) that would have been this file's image or mask, if any."""
    if role == "images":
        keys = [stem] + [stem + s for s in suffixes]
    else:
        keys = [stem] + [stem[: -len(s)] for s in suffixes if stem.endswith(s) and len(stem) > len(s)]
    return next((broken[key] for key in keys if key in broken), None)


def _pairs(
    root: Path, mask_suffix: str | None
) -> tuple[dict[str, list[Sample]], dict[str, dict[str, list[Path]]], list[Problem]]:
    """The pairs discover_dataset found, and its unpaired and unreadable entries as problems, in folder order."""
    try:
        found = discover_dataset(root, mask_suffix=mask_suffix)
    except DataError as exc:
        if not root.is_dir():
            raise
        return {}, {}, [Problem("error", "layout", [root], str(exc))]
    problems = [Problem("warning", "layout", [root], left_out_message(split, folder))
                for split, folder in found.splits_left_out.items()]
    suffixes = (mask_suffix,) if mask_suffix else MASK_SUFFIXES
    broken = {p.stem: p for p in found.unreadable}
    listed: list[tuple[Path, Problem]] = [
        (path, Problem("error", "unreadable", [path], entry_problem(path))) for path in found.unreadable]
    for roles in found.unpaired.values():
        for role, paths in roles.items():
            other = "mask" if role == "images" else "image"
            for path in paths:
                partner = _broken_partner(path.stem, role, suffixes, broken)
                reason = (f"its {other} {partner} is not a readable file" if partner is not None
                          else f"no {other} with the stem '{display_path(path.stem)}'")
                listed.append((path, Problem("error", "unpaired", [path],
                                             f"{path}: {role[:-1]} has no {other} ({reason})")))
    problems += [problem for _, problem in sorted(listed, key=lambda item: (item[0].parent, item[0].name))]
    return found.splits, found.unpaired, problems


# --- aggregation -----------------------------------------------------------------------------


def _evenly(items: list[Path], count: int) -> list[Path]:
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


def _default_workers() -> int:
    """The CPUs this process may use (a container's limit, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_dataset(
    root: str | Path,
    *,
    classes: str | Path | list[str] | None = None,
    foreground: int | None = None,
    mask_suffix: str | None = None,
    ignore_index: int = 255,
    workers: int | None = None,
    progress: bool = True,
    palette: str | Path | None = None,
    ignore_color: tuple[int, int, int] | None = None,
) -> CheckReport:
    """Check every image and mask under `root` and report the problems found; only raises for bad arguments."""
    started = time.perf_counter()
    root = Path(root)
    if classes is None:
        classes = find_class_file(root)
    names = read_class_names(classes)
    # A bad ignore value is a bad argument: raised here, before any file is read (the one rule, in encoding.py).
    problem = ignore_index_problem(ignore_index, len(names) if names else 0, names)
    if problem is not None:
        raise ConfigError(problem)
    workers = _default_workers() if workers is None else max(1, int(workers))
    if not root.exists():
        raise DataError(f"{root}: folder not found")

    report = CheckReport(root=root, ignore_index=ignore_index, classes_given=names is not None)
    if isinstance(classes, (str, os.PathLike)):
        report.classes_file = Path(classes)
    splits, report.unpaired, report.problems = _pairs(root, mask_suffix)
    report.splits = {split: len(samples) for split, samples in splits.items()}

    image_paths = sorted({s.image for samples in splits.values() for s in samples})
    mask_paths = sorted({s.mask for samples in splits.values() for s in samples if s.mask is not None})
    stats_pool = sorted({s.image for s in splits.get("train") or [s for v in splits.values() for s in v]})
    stats_set = set(_evenly(stats_pool, STATS_SAMPLE))
    tasks = [("image", p, p in stats_set) for p in image_paths] + [("mask", p, False) for p in mask_paths]
    results = {(r.kind, r.path): r for r in _map(_inspect, tasks, workers, progress, "checking files")}
    report.files_checked = len(results)
    for result in results.values():
        if not result.ok:
            report.problems.append(Problem("error", result.code or "unreadable", [result.path],
                                           result.message or f"{result.path}: cannot read"))

    _summarise_images(report, splits, results)
    encoding_options: dict[str, Any] = {"foreground": foreground}
    # Passed only when given, so check works with masks.py versions that predate colour masks.
    if palette is not None:
        encoding_options["palette"] = palette
    if ignore_color is not None:
        encoding_options["ignore_color"] = ignore_color
    _summarise_classes(report, splits, results, classes, encoding_options, workers, progress)
    report.seconds = time.perf_counter() - started
    return report


def _summarise_images(report: CheckReport, splits: dict[str, list[Sample]],
                      results: dict[tuple[str, Path], _FileResult]) -> None:
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
        if (result.mode or "") in _ALPHA_MODES:
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
            if image and mask and image.ok and mask.ok and image.size != mask.size:
                assert image.size and mask.size
                report.problems.append(Problem(
                    "error", "size_mismatch", [s.mask, s.image],
                    f"{s.mask}: mask is {mask.size[0]}x{mask.size[1]} but image {s.image.name} is "
                    f"{image.size[0]}x{image.size[1]}"))

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


def _counts_by_value(report: CheckReport, readable: list[Path], results: dict[tuple[str, Path], _FileResult],
                     encoding: MaskEncoding, num_classes: int) -> dict[Path, tuple[np.ndarray, int]]:
    """Per-mask class pixels from the raw value histograms: exact where decoding maps each value alone."""
    ignore_index = report.ignore_index
    keys_per_mask = {p: results[("mask", p)].values.tolist() for p in readable}  # type: ignore[union-attr]
    all_keys = sorted({k for keys in keys_per_mask.values() for k in keys})
    value_class = _decode_values(all_keys, encoding, num_classes, ignore_index)
    counts: dict[Path, tuple[np.ndarray, int]] = {}
    for path in readable:
        result = results[("mask", path)]
        assert result.counts is not None
        pixels = np.zeros(num_classes, np.int64)
        ignored = 0
        bad: list[Any] = []
        for key, count in zip(keys_per_mask[path], result.counts.tolist()):
            cls = value_class[key]
            if cls < 0:
                bad.append(key)
            elif cls == ignore_index and encoding.kind == "index":
                ignored += count
            else:
                pixels[cls] += count
        if bad:
            shown = ", ".join(str(v) for v in bad[:10]) + (f", … and {len(bad) - 10} more" if len(bad) > 10 else "")
            source = f" of the {num_classes} classes given" if report.classes_given else f" ({num_classes} classes)"
            report.problems.append(Problem(
                "error", "values_outside_classes", [path],
                f"{path}: mask values [{shown}] are outside the classes 0..{num_classes - 1}{source} "
                f"and are not ignore_index {ignore_index}"))
        counts[path] = (pixels, ignored)
    return counts


def _report_strays(report: CheckReport, readable: list[Path], results: dict[tuple[str, Path], _FileResult],
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
                        workers: int, progress: bool) -> dict[Path, tuple[np.ndarray, int]]:
    """Per-mask class pixels from read_mask itself (colour and lossy masks: decoding looks at neighbours)."""
    tasks = [(path, encoding, num_classes, report.ignore_index) for path in readable]
    counts: dict[Path, tuple[np.ndarray, int]] = {}
    lossy: list[_ClassCount] = []
    for result in _map(_count_classes, tasks, workers, progress, "decoding masks"):
        if result.pixels is None:
            report.problems.append(Problem("error", result.code or "unreadable", [result.path],
                                           result.message or f"{result.path}: cannot decode mask"))
            continue
        counts[result.path] = (result.pixels, result.ignored)
        if result.lossy_notes:
            lossy.append(result)
    if lossy:
        paths = [r.path for r in lossy]
        report.problems.append(Problem(
            "warning", "lossy_mask", paths,
            f"{len(paths)} mask(s) are lossy (e.g. JPEG): off-class pixels were snapped to the nearest class; "
            f"first: {lossy[0].lossy_notes[0]}"))
    return counts


def _summarise_classes(report: CheckReport, splits: dict[str, list[Sample]],
                       results: dict[tuple[str, Path], _FileResult], classes: Any,
                       encoding_options: dict[str, Any], workers: int, progress: bool) -> None:
    """Mask encoding, class pixel and image counts per split, out-of-class values, rare classes."""
    readable = sorted(p for (kind, p), r in results.items() if kind == "mask" and r.ok)
    if not readable:
        return
    # Lossless gray masks decode value by value: their histograms alone give every class pixel count.
    gray_lossless = (all(results[("mask", p)].format not in _LOSSY_FORMATS for p in readable)
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
    per_mask = {path: pixels for path, (pixels, _) in counts.items()}
    ignored_per_mask = {path: ignored for path, (_, ignored) in counts.items()}
    where_seen: dict[int, list[Path]] = {}
    for path, pixels in sorted(per_mask.items()):
        for cls in np.flatnonzero(pixels).tolist():
            where_seen.setdefault(cls, []).append(path)

    overall_pixels = np.zeros(num_classes, np.int64)
    overall_images = np.zeros(num_classes, np.int64)
    counted = 0
    ignored_total = 0
    for split, samples in splits.items():
        split_pixels = np.zeros(num_classes, np.int64)
        split_images = np.zeros(num_classes, np.int64)
        split_counted = split_ignored = 0
        for s in samples:
            if s.mask in per_mask:
                split_pixels += per_mask[s.mask]
                split_images += per_mask[s.mask] > 0
                split_counted += 1
                split_ignored += ignored_per_mask[s.mask]
        report.class_pixels[split] = split_pixels.tolist()
        report.class_images[split] = split_images.tolist()
        report.masks_counted[split] = split_counted
        report.ignored_pixels[split] = split_ignored
        overall_pixels += split_pixels
        overall_images += split_images
        counted += split_counted
        ignored_total += split_ignored
    report.class_pixels["overall"] = overall_pixels.tolist()
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


# --- output ----------------------------------------------------------------------------------


def fingerprint(report: CheckReport) -> dict[str, Any]:
    """The dataset summary that planning needs (training split when there is one, else all pairs)."""
    source = "train" if "train" in report.class_pixels else "overall"
    train_images = report.splits.get("train", sum(report.splits.values()))
    sizes = report.size_summary()
    dominant = max(report.image_channels.items(), key=lambda item: item[1])[0] if report.image_channels else None
    shares = report.pixel_shares(source)
    return {
        "version": 1,
        "dataset": display_path(report.root),
        "splits": dict(report.splits),
        "train_images": train_images,
        "image_size": {
            "median_width": sizes["width"]["median"] if sizes.get("images") else None,
            "median_height": sizes["height"]["median"] if sizes.get("images") else None,
            "min_width": sizes["width"]["min"] if sizes.get("images") else None,
            "min_height": sizes["height"]["min"] if sizes.get("images") else None,
            "max_width": sizes["width"]["max"] if sizes.get("images") else None,
            "max_height": sizes["height"]["max"] if sizes.get("images") else None,
            "common": sizes.get("common", []),
        },
        "channels": dominant,
        "image_modes": dict(report.image_modes),
        "num_classes": report.num_classes,
        "class_names": [safe_text(n) for n in report.class_names],
        "encoding": report.encoding.to_dict() if report.encoding is not None else None,
        "ignore_index": report.ignore_index,
        "class_statistics_from": source,
        "class_pixel_frequency": [round(s, 8) for s in shares],
        "class_image_count": list(report.class_images.get(source, [])),
        "masks_counted": report.masks_counted.get(source, 0),
        "foreground_share": round(1.0 - shares[0], 8) if shares else None,
        "never_seen": [safe_text(n) for n in report.never_seen()],
        "rare": [safe_text(n) for n in report.rare_classes()],
        "mean": report.mean,
        "std": report.std,
        "stats_images": report.stats_images,
        "problems": {"errors": len(report.errors), "warnings": len(report.warnings)},
    }


def write_fingerprint(report: CheckReport, path: str | Path) -> Path:
    """Write `fingerprint(report)` as JSON, atomically; returns the path."""
    path = Path(path)
    write_text_atomic(path, json.dumps(fingerprint(report), indent=1) + "\n")
    return path


def print_report(report: CheckReport, console: Console) -> None:
    """A readable terminal report: counts, classes, sizes, and problems grouped by code."""

    def text(value: Any) -> str:
        return escape(safe_text(str(value)))

    console.print(f"[bold]Dataset[/bold] {text(display_path(report.root))}  "
                  f"({report.files_checked} files in {report.seconds:.1f} s)")

    counts = Table(title="Pairs per split", title_justify="left")
    for column in ("split", "pairs", "unpaired images", "unpaired masks"):
        counts.add_column(column, justify="left" if column == "split" else "right")
    for split, pairs in report.splits.items():
        roles = report.unpaired.get(split, {})
        counts.add_row(text(split), str(pairs), str(len(roles.get("images", []))), str(len(roles.get("masks", []))))
    console.print(counts)

    if report.image_sizes:
        summary = report.size_summary()
        sizes = Table(title="Image sizes (pixels)", title_justify="left")
        for column in ("", "min", "median", "max"):
            sizes.add_column(column, justify="right")
        for axis in ("width", "height"):
            spread = summary[axis]
            sizes.add_row(axis, str(spread["min"]), f"{spread['median']:g}", str(spread["max"]))
        console.print(sizes)
        common = ", ".join(f"{c['width']}x{c['height']} ({c['count']})" for c in summary["common"])
        modes = ", ".join(f"{text(m)} {n}" for m, n in report.image_modes.items())
        console.print(f"most common sizes: {common}")
        console.print(f"image modes: {modes}")
        if report.mean is not None:
            console.print(f"mean {report.mean}, std {report.std} (0..1 scale, {report.stats_images} images)")

    if report.class_names and report.class_pixels:
        encoding = report.encoding.kind if report.encoding else "?"
        table = Table(title=f"Classes ({report.num_classes}, {encoding} masks; "
                            f"{report.masks_counted.get('overall', 0)} masks counted)", title_justify="left")
        for column in ("#", "class", "pixel share", "masks", "status"):
            table.add_column(column, justify="left" if column in ("class", "status") else "right")
        shares = report.pixel_shares()
        images = report.class_images["overall"]
        order = sorted(range(report.num_classes), key=lambda i: (-shares[i], -images[i], i))
        for index in order:
            status = report.class_status(index)
            style = {"never seen": "bold red", "rare": "yellow"}.get(status, "")
            table.add_row(str(index), text(report.class_names[index]), f"{100 * shares[index]:.3f}%",
                          str(images[index]), f"[{style}]{status.upper()}[/{style}]" if status else "")
        console.print(table)
        if report.never_seen():
            console.print(f"[bold red]never seen:[/bold red] {text(', '.join(report.never_seen()))}")
        if report.rare_classes():
            console.print(f"[yellow]rare[/yellow] (in < {100 * RARE_IMAGE_SHARE:g}% of masks or in "
                          f"≤ {RARE_MAX_IMAGES}): {text(', '.join(report.rare_classes()))}")

    if report.problems:
        grouped: dict[str, list[Problem]] = {}
        for problem in report.problems:
            grouped.setdefault(problem.code, []).append(problem)
        order = sorted(grouped, key=lambda code: (grouped[code][0].severity != "error", code))
        for code in order:
            problems = grouped[code]
            severity = problems[0].severity
            colour = "red" if severity == "error" else "yellow"
            console.print(f"[{colour}]{severity}[/{colour}] [bold]{code}[/bold]: {len(problems)}")
            lines = [problems[0].message] if len(problems) == 1 else [p.message for p in problems]
            for line in lines[:LISTED]:
                console.print(f"  {text(line)}", highlight=False)
            if len(lines) > LISTED:
                console.print(f"  … and {len(lines) - LISTED} more")
    errors, warns = len(report.errors), len(report.warnings)
    verdict = "[green]clean[/green]" if not report.problems else (
        f"[red]{errors} error(s)[/red], [yellow]{warns} warning(s)[/yellow]")
    console.print(f"[bold]Result:[/bold] {verdict}")
