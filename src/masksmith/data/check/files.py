"""Per-file inspection (in worker processes): header checks, a full decode, pixel statistics, value histograms."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from masksmith.data.encoding import MaskEncoding
from masksmith.data.images import NPY_SUFFIX, failure_code, read_image
from masksmith.data.limits import ImageTooLarge, max_image_pixels, open_image, set_max_image_pixels
from masksmith.data.masks import read_mask, read_mask_values
from masksmith.errors import DataError

CHUNKSIZE = 16  # files per worker task: large enough to hide inter-process overhead
PARALLEL_MIN_FILES = 32  # below this, starting worker processes costs more than it saves
# Check workers start clean (see map_tasks); Windows has no fork server, and spawns.
_WORKER_CONTEXT = multiprocessing.get_context(
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
_WIDE_BITS = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


@dataclass
class FileResult:
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
    runs: np.ndarray | None = None  # runs of each distinct value along rows plus along columns (structure_runs)

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


def _read_header(result: FileResult) -> None:
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


def _classify_read_error(result: FileResult, exc: DataError) -> None:
    """Record a read failure with its one-line message and the code the reader gave it."""
    result.code, result.message = getattr(exc, "code", "unreadable"), str(exc)


def _file_digest(path: Path) -> str:
    """BLAKE2b-128 of the file bytes, read in chunks so a huge file never sits in memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _inspect_image(result: FileResult, want_stats: bool) -> None:
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


def structure_runs(labels: np.ndarray, size: int) -> np.ndarray:
    """Runs of each label 0..size-1 along the rows plus along the columns of a 2-D label array.

    A label's pixels divided by its runs is the width of its structures: a stripe w pixels wide and L long
    has w*L pixels in w + L runs (about w when L >> w); a disc of diameter d gives about 0.4 d.
    """
    starts_in_rows = np.ones(labels.shape, bool)
    starts_in_rows[:, 1:] = labels[:, 1:] != labels[:, :-1]
    starts_in_columns = np.ones(labels.shape, bool)
    starts_in_columns[1:, :] = labels[1:, :] != labels[:-1, :]
    return (np.bincount(labels[starts_in_rows], minlength=size)
            + np.bincount(labels[starts_in_columns], minlength=size)).astype(np.int64)


def _inspect_mask(result: FileResult, want_stats: bool) -> None:
    """Raw mask values, their pixel counts and runs; decoding to classes happens once, in the parent."""
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
        result.runs = structure_runs(values, 256)[distinct]
    elif values.ndim == 2:
        result.values, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        result.counts = counts.astype(np.int64)
        result.runs = structure_runs(inverse.reshape(values.shape), len(counts))
    else:  # several values per pixel (colour masks): one row per distinct colour
        # No runs: colour masks are counted by decoding them (count_classes), which counts their runs.
        rows = values.reshape(-1, values.shape[2])
        result.values, counts = np.unique(rows, axis=0, return_counts=True)
        result.counts = counts.astype(np.int64)


def inspect_file(task: tuple[str, Path, bool]) -> FileResult:
    """Check one file; every failure becomes a coded result, never an exception."""
    kind, path, want_stats = task
    result = FileResult(kind, path)
    try:
        _read_header(result)  # the pixel limit (masksmith.data.limits) is applied here, before any decode
        if result.ok:
            (_inspect_image if kind == "image" else _inspect_mask)(result, want_stats)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the check of a thousand others
        reason = _reason(exc)
        result.code, result.message = failure_code(exc), f"{path}: cannot read {kind}: {reason}"
    if not result.ok:
        result.values = result.counts = result.runs = result.stats = None
    return result


def map_tasks(function: Callable[[Any], Any], tasks: list[Any], workers: int, progress: bool, desc: str) -> Iterator[Any]:
    """`function` over the tasks, in order; in worker processes when there are enough tasks to pay for them."""
    bar = tqdm(total=len(tasks), desc=desc, unit="file", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(tasks) < PARALLEL_MIN_FILES:
            for task in tasks:
                yield function(task)
                bar.update()
            return
        try:
            # Workers come from a fork server, never a fork of this process: a fork copies locks that this
            # process's other threads (PyTorch, tqdm, a server) may hold, and the child can wait on them forever
            # (seen: a check inside the test suite hung in PIL's PNG reader). They apply the parent's pixel limit.
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_WORKER_CONTEXT,
                                     initializer=set_max_image_pixels, initargs=(max_image_pixels(),)) as pool:
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
class ClassCount:
    """Pixels per class of one mask decoded the way training decodes it (the canonical `read_mask`)."""

    path: Path
    pixels: np.ndarray | None = None
    runs: np.ndarray | None = None  # per class (structure_runs)
    ignored: int = 0
    code: str | None = None
    message: str | None = None
    lossy_notes: list[str] = field(default_factory=list)


def count_classes(task: tuple[Path, MaskEncoding, int, int]) -> ClassCount:
    """Decode one mask with read_mask and count its classes; failures and snapping notes are recorded."""
    path, encoding, num_classes, ignore_index = task
    count = ClassCount(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decoded = read_mask(path, encoding, num_classes, ignore_index)
            histogram = np.bincount(decoded.ravel(), minlength=256)
            count.pixels = histogram[:num_classes].astype(np.int64)
            count.runs = structure_runs(decoded, 256)[:num_classes]
            count.ignored = int(histogram[ignore_index]) if ignore_index < len(histogram) else 0
        except DataError as exc:
            count.code, count.message = "values_outside_classes", str(exc)
        except Exception as exc:  # noqa: BLE001 - reported per file like every other failure
            count.code, count.message = "unreadable", f"{path}: cannot decode mask: {_reason(exc)}"
    count.lossy_notes = [str(w.message) for w in caught if "snapped" in str(w.message)]
    return count


def default_workers() -> int:
    """The CPUs this process may use (a container's limit, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

