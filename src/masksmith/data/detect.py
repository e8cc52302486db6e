"""Detect the mask encoding of a dataset from a sample of its masks, and count the sampled pixels per class.

Colors found without a palette file are numbered by their packed value 0xRRGGBB, ascending: black (0, 0, 0)
is class 0 when present, and the numbering depends only on which colors occur, not on how often. Masks full
of compression artifacts (JPEG) give a `lossy` encoding. Class names and the ignore value are decided on top
of this, once, by `masksmith.data.labels.resolve_labels`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from masksmith.data.encoding import (
    DEFAULT_IGNORE_INDEX,
    MAX_CLASSES,
    MaskEncoding,
    as_color,
    check_class_range,
    color_tuple,
    ignore_index_problem,
)
from masksmith.data.lossy import (
    ARTIFACT_MIN_DISTINCT,
    ARTIFACT_NEAR_FRACTION,
    FLAT_TOLERANCE,
    LEVEL_BIN,
    LEVEL_MIN_PIXELS,
    LEVEL_MIN_SHARE,
    LEVEL_OWN_SHARE,
    MERGE_RADIUS,
    NEAR,
    looks_lossy,
    nearest_center,
)
from masksmith.data.masks import ColorLookup, binary_classes, binary_strays, classify_colors, load_raw_mask
from masksmith.data.palette import Color, pack_colors, read_palette_file, unpack_colors
from masksmith.errors import ConfigError, DataError


class StrayMaskValuesWarning(UserWarning):
    """Binary masks hold values that are neither the foreground nor the background value."""



def _warn_strays(files: list[_FileSurvey], encoding: MaskEncoding, sample_dir: Path) -> None:
    """One warning with the stray pixel and file counts of the sampled binary masks (check counts every mask)."""
    found = [(f.path, *binary_strays(f.gray.keys, f.gray.counts, encoding)) for f in files if f.gray is not None]
    found = [item for item in found if item[1]]
    if not found:
        return
    pixels = sum(item[1] for item in found)
    values = sorted({v for item in found for v in item[2]})
    shown = ", ".join(str(v) for v in values[:10]) + (", …" if len(values) > 10 else "")
    warnings.warn(
        f"{sample_dir}: {pixels} pixels in {len(found)} of the {len(files)} masks sampled have values ({shown}) that "
        f"are neither the foreground {encoding.foreground} nor the background {encoding.background}; they count as "
        f"background (first: {found[0][0].name}; check the masks or the foreground value)",
        StrayMaskValuesWarning, stacklevel=4)



def _evenly_spaced(paths: list[Path], count: int) -> list[Path]:
    """Up to `count` paths spread over the whole list (first and last included), deterministic."""
    if len(paths) <= count:
        return list(paths)
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    return [paths[i] for i in dict.fromkeys(picks.tolist())]


def _flat(plane: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
    """HxW bool: pixels equal to their 4 neighbours in `plane`, or within FLAT_TOLERANCE of them in `pixels`.

    Class regions are flat, edges are not; JPEG noise inside a region stays within the tolerance.
    """
    height, width = plane.shape[:2]
    flat = np.zeros((height, width), bool)
    if height < 3 or width < 3:
        flat[:] = True  # too small to tell: every pixel counts
        return flat
    inner = np.ones((height - 2, width - 2), bool)
    if pixels is None:
        core = plane[1:-1, 1:-1]
        for neighbour in (plane[:-2, 1:-1], plane[2:, 1:-1], plane[1:-1, :-2], plane[1:-1, 2:]):
            inner &= core == neighbour
    else:
        channels = [pixels] if pixels.ndim == 2 else [pixels[..., c] for c in range(pixels.shape[2])]
        for channel in channels:  # one contiguous int16 plane at a time: far faster than a max over axis 2
            wide = channel.astype(np.int16 if channel.dtype == np.uint8 else np.int64)
            core = wide[1:-1, 1:-1]
            for neighbour in (wide[:-2, 1:-1], wide[2:, 1:-1], wide[1:-1, :-2], wide[1:-1, 2:]):
                inner &= np.abs(core - neighbour) <= FLAT_TOLERANCE
    flat[1:-1, 1:-1] = inner
    return flat


@dataclass
class _Stats:
    """Per-value pixel counts of one or more masks: keys are gray values, or packed colors."""

    keys: np.ndarray
    counts: np.ndarray
    flat: np.ndarray  # pixels of each key inside flat regions, JPEG noise tolerated (see _flat); else = exact
    exact: np.ndarray  # pixels of each key equal to all 4 neighbours: artifacts almost never have any

    @staticmethod
    def of(plane: np.ndarray, lossy_pixels: np.ndarray | None = None) -> _Stats:
        """Count an HxW plane of keys (gray values or packed colors); lossy_pixels: judge flatness with tolerance."""
        keys, inverse, counts = np.unique(plane, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        exact = np.bincount(inverse, _flat(plane).reshape(-1), len(keys)).astype(np.int64)
        # The tolerant pass costs a few full-image passes, so only JPEG masks pay for it.
        flat = exact if lossy_pixels is None else np.bincount(
            inverse, _flat(plane, lossy_pixels).reshape(-1), len(keys)).astype(np.int64)
        return _Stats(keys.astype(np.int64), counts.astype(np.int64), flat, exact)

    @staticmethod
    def merge(parts: Sequence[_Stats]) -> _Stats:
        """Sum counts over several masks."""
        keys, inverse = np.unique(np.concatenate([p.keys for p in parts]), return_inverse=True)
        counts = np.bincount(inverse, np.concatenate([p.counts for p in parts]), len(keys)).astype(np.int64)
        flat = np.bincount(inverse, np.concatenate([p.flat for p in parts]), len(keys)).astype(np.int64)
        exact = np.bincount(inverse, np.concatenate([p.exact for p in parts]), len(keys)).astype(np.int64)
        return _Stats(keys, counts, flat, exact)

    def without(self, key: int) -> _Stats:
        """The same counts with one key left out."""
        keep = self.keys != key
        return _Stats(self.keys[keep], self.counts[keep], self.flat[keep], self.exact[keep])


@dataclass
class _FileSurvey:
    """One sampled mask: its raw values' statistics, and how to see them as colors."""

    path: Path
    jpeg: bool
    color: bool  # a true-color RGB mask
    gray: _Stats | None  # counts of the raw values (gray values or palette indices); None for color masks
    colors: _Stats | None  # counts of packed colors; None when the values are not 8-bit


def _survey_file(path: Path) -> _FileSurvey:
    """Read one mask and count its values and colors."""
    raw = load_raw_mask(path)
    if raw.values.ndim == 3:
        return _FileSurvey(path, raw.jpeg, True, None,
                           _Stats.of(pack_colors(raw.values), raw.values if raw.jpeg else None))
    gray = _Stats.of(raw.values, raw.values if raw.jpeg else None)
    colors = None
    if raw.palette is not None:
        colors = _Stats.of(pack_colors(raw.palette[raw.values]))
    elif gray.keys.size and gray.keys.min() >= 0 and gray.keys.max() <= 255:
        colors = _Stats(gray.keys * 0x010101, gray.counts, gray.flat, gray.exact)  # gray v is the color (v, v, v)
    return _FileSurvey(path, raw.jpeg, False, gray, colors)


def _levels(stats: _Stats, space: str) -> np.ndarray:
    """Indices (into stats.keys) of the class levels of a lossy mask, ascending.

    Flat pixels are binned (colors in cubes of LEVEL_BIN); the fullest bins, by flat pixels, are the classes,
    each represented by its most frequent flat value. Bins close to a chosen level are the same class rendered
    with codec noise (gray values: unless big enough to be a class of their own, as 1 is next to 0).
    """
    points = unpack_colors(stats.keys).astype(np.int64) if space == "color" else stats.keys[:, None]
    used = np.flatnonzero(stats.flat)
    if used.size == 0:
        return np.zeros(0, np.int64)
    bins = points[used] // LEVEL_BIN[space]
    bin_keys = (bins[:, 0] << 40) | (bins[:, 1] << 20) | bins[:, 2] if space == "color" else bins[:, 0]
    unique_bins, inverse = np.unique(bin_keys, return_inverse=True)
    bin_flat = np.bincount(inverse, stats.flat[used], len(unique_bins))
    total = float(stats.flat.sum())
    chosen: list[int] = []
    for b in np.lexsort((unique_bins, -bin_flat)):  # fullest first; ties by bin, deterministic
        support = bin_flat[b]
        if support < LEVEL_MIN_PIXELS or support < LEVEL_MIN_SHARE * total:
            break
        members = used[inverse == b]
        mode = int(members[np.argmax(stats.flat[members])])
        if chosen:
            _, distance = nearest_center(points[mode : mode + 1], points[chosen])
            own_class = space == "gray" and support >= LEVEL_OWN_SHARE * total
            if distance[0] <= MERGE_RADIUS[space] and not own_class:
                continue
        chosen.append(mode)
    return np.sort(np.asarray(chosen, np.int64))


def _content_looks_lossy(stats: _Stats, space: str) -> bool:
    """Many distinct values that never form a flat patch, lying near class levels: a lossily saved mask."""
    levels = _levels(stats, space)
    if levels.size == 0:
        return False
    rest = np.setdiff1d(np.arange(len(stats.keys)), levels)
    rest = rest[stats.exact[rest] == 0]
    if len(rest) < max(ARTIFACT_MIN_DISTINCT, len(stats.keys) // 2):
        return False
    points = unpack_colors(stats.keys) if space == "color" else stats.keys[:, None]
    _, distance = nearest_center(points[rest], points[levels])
    return looks_lossy(stats.counts[rest], distance, space)


@dataclass(frozen=True)
class MaskSurvey:
    """What detection found in a sample of masks: the encoding, the class count and pixels per class."""

    encoding: MaskEncoding
    num_classes: int
    counts: tuple[int, ...]  # sampled pixels per class, in class order
    ignored: int  # sampled pixels read as ignore_index
    files: int  # masks sampled and read
    unreadable: tuple[str, ...] = ()  # errors of sampled masks that could not be read (left out of the counts)


def _class_counts(stats: _Stats, classes: np.ndarray, num_classes: int,
                  ignore_index: int) -> tuple[tuple[int, ...], int]:
    """Pixels per class, and ignored pixels, from per-key counts and each key's class."""
    per_class = np.bincount(classes.astype(np.int64), stats.counts, minlength=256)
    return tuple(int(c) for c in per_class[:num_classes]), int(per_class[ignore_index])


def _color_survey(files: list[_FileSurvey], encoding: MaskEncoding | None, *, ignore_color: Color | None,
                  ignore_index: int, max_colors: int, where: str) -> MaskSurvey:
    """Color masks: use the given table (a palette file), or find the colors in the sample."""
    for f in files:
        if f.colors is None:
            raise DataError(f"{f.path}: mask values do not fit 8-bit colors, but the other masks are RGB color masks")
    stats = _Stats.merge([f.colors for f in files if f.colors is not None])
    jpeg = any(f.jpeg for f in files)
    if encoding is None:
        ignore_key = None if ignore_color is None else int(pack_colors(np.asarray(ignore_color, np.uint8)))
        found, lossy = _find_colors(stats, jpeg=jpeg, max_colors=max_colors, where=where, skip=ignore_key)
        if not found.size:
            raise DataError(f"{where}masks hold no color besides the ignore color")
        encoding = MaskEncoding("color", colors=[color_tuple(rgb) for rgb in unpack_colors(found)],
                                ignore_color=ignore_color, lossy=lossy)
    elif jpeg:
        encoding = replace(encoding, lossy=True)
    assert encoding.colors is not None
    num_classes = len(encoding.colors)
    check_class_range(num_classes, ignore_index)
    lookup = ColorLookup.of(encoding, ignore_index)
    reason = "lossy mask" if encoding.lossy else None
    classes, _, reason = classify_colors(stats.keys.astype(np.uint32), stats.counts, lookup, where, reason)
    if reason is not None:
        encoding = replace(encoding, lossy=True)  # a palette file's colors, smeared by compression
    counts, ignored = _class_counts(stats, classes, num_classes, ignore_index)
    return MaskSurvey(encoding, num_classes, counts, ignored, len(files))


def _find_colors(stats: _Stats, *, jpeg: bool, max_colors: int, where: str,
                 skip: int | None) -> tuple[np.ndarray, bool]:
    """The class colors (packed, ascending) in color statistics, and whether the masks look lossy."""
    if skip is not None:
        stats = stats.without(skip)
    lossy = jpeg or len(stats.keys) > max_colors or (
        len(stats.keys) >= ARTIFACT_MIN_DISTINCT and _content_looks_lossy(stats, "color"))
    found = stats.keys[_levels(stats, "color")] if lossy else stats.keys
    unexplained = False
    if lossy and not jpeg and found.size:
        # Not JPEG, yet too many colors: accept them as artifacts only if they hug a few flat class colors.
        _, distance = nearest_center(unpack_colors(stats.keys), unpack_colors(found))
        unexplained = stats.counts[distance <= NEAR["color"]].sum() < ARTIFACT_NEAR_FRACTION * stats.counts.sum()
    if unexplained or len(found) > max_colors or not found.size:
        raise DataError(
            f"{where}masks hold {len(stats.keys)} distinct colors, more than max_colors={max_colors} class colors; "
            "class-color masks have one flat color per class (are these photos, or resized with interpolation?)"
        )
    return np.sort(found), lossy


def discover_colors(mask_paths: Sequence[str | Path], max_colors: int = 256) -> list[tuple[Color, int]]:
    """(color, pixel count) of every class color in these masks, numbered by packed 0xRRGGBB value (black first).

    Lossy (JPEG) masks give their flat class colors, each with the pixels that snap to it.
    """
    if not mask_paths:
        raise DataError("no masks given to discover colors in")
    files = [_survey_file(Path(p)) for p in mask_paths]
    for f in files:
        if f.colors is None:
            raise DataError(f"{f.path}: mask values do not fit 8-bit colors")
    stats = _Stats.merge([f.colors for f in files if f.colors is not None])
    where = f"{Path(mask_paths[0]).parent}: "
    found, lossy = _find_colors(stats, jpeg=any(f.jpeg for f in files), max_colors=max_colors, where=where, skip=None)
    counts = stats.counts  # clean masks: found is every color, in the same (ascending) order
    if lossy:
        nearest, _ = nearest_center(unpack_colors(stats.keys), unpack_colors(found))
        counts = np.bincount(nearest, stats.counts, len(found))
    return [(color_tuple(rgb), int(n)) for rgb, n in zip(unpack_colors(found), counts)]


def _refuse_wide(classes: np.ndarray, sample_dir: Path, ignore_index: int) -> None:
    """Class indices must fit the uint8 mask contract, and the ignore value must not be one of them."""
    top = int(classes.max())
    if top > MAX_CLASSES - 1:
        raise DataError(
            f"masks in {sample_dir} have values up to {top}; class indices must stay below {MAX_CLASSES} "
            "(at most 255 classes; a mask is a uint8 class-index array, so 16-bit label values of 256 and above cannot be classes; "
            "a 16-bit binary mask is 0/65535): remap the labels to 0..N-1"
        )
    problem = ignore_index_problem(ignore_index, top + 1)
    if problem is not None:
        raise DataError(f"masks in {sample_dir} have values up to {top}: {problem}")


def _gray_survey(files: list[_FileSurvey], *, foreground: int | None, ignore_index: int,
                 sample_dir: Path) -> MaskSurvey:
    """Grayscale / palette-index masks: binary or class indices, clean or lossy."""
    stats = _Stats.merge([f.gray for f in files if f.gray is not None])
    seen = set(stats.keys.tolist())
    eight_bit = bool(stats.keys.min() >= 0 and stats.keys.max() <= 255)
    lossy = eight_bit and (any(f.jpeg for f in files) or _content_looks_lossy(stats, "gray"))
    values = stats.keys[_levels(stats, "gray")] if lossy else stats.keys
    if lossy and values.size == 0:
        values = stats.keys[[int(np.argmax(stats.counts))]]
    levels = [int(v) for v in values]

    if foreground is not None:
        if foreground not in seen:
            raise DataError(
                f"foreground value {foreground} occurs in none of the {len(files)} masks sampled "
                f"(from {sample_dir}); values seen: {sorted(seen)[:20]}"
            )
        others = [v for v in levels if v != foreground]
        # The other value is recorded only when there is exactly one: "class k versus the rest" has none.
        background = others[0] if len(others) == 1 else None
        encoding = MaskEncoding("binary", foreground, background, lossy=lossy)
    elif set(levels) <= {0, 1} and 1 in levels:
        encoding = MaskEncoding("binary", 1, 0, lossy=lossy)
    elif set(levels) <= {0, 255} and 255 in levels:
        encoding = MaskEncoding("binary", 255, 0, lossy=lossy)
    elif set(levels) <= {0, 65535} and 65535 in levels:
        encoding = MaskEncoding("binary", 65535, 0, lossy=lossy)
    elif set(levels) == {0}:
        encoding = MaskEncoding("binary", lossy=lossy)  # all background: any non-zero value is foreground
    elif lossy and len(levels) == 2:
        encoding = MaskEncoding("binary", levels[1], levels[0], lossy=True)  # e.g. a JPEG of 0/200
    else:
        classes = np.asarray([v for v in levels if v != ignore_index], np.int64)
        if classes.size == 0:
            raise DataError(f"masks in {sample_dir} hold only the ignore value {ignore_index}")
        if classes.min() < 0:
            negative = sorted(int(v) for v in classes if v < 0)[:10]
            raise DataError(f"masks in {sample_dir} have negative values {negative}")
        _refuse_wide(classes, sample_dir, ignore_index)
        top = int(classes.max())
        encoding = MaskEncoding("index", lossy=lossy)
        num_classes = top + 1
        keys = stats.keys
        if lossy:
            valid = np.append(np.arange(num_classes), ignore_index)
            nearest, _ = nearest_center(keys[:, None], valid[:, None])
            keys = valid[nearest]
        keys = np.where((keys >= 0) & (keys < num_classes), keys, ignore_index)
        counts, ignored = _class_counts(stats, keys, num_classes, ignore_index)
        return MaskSurvey(encoding, num_classes, counts, ignored, len(files))

    _warn_strays(files, encoding, sample_dir)
    counts, _ = _class_counts(stats, binary_classes(stats.keys, encoding, lossy), 2, ignore_index)
    return MaskSurvey(encoding, 2, counts, 0, len(files))


def survey_masks(
    mask_paths: Sequence[str | Path],
    *,
    foreground: int | None = None,
    max_files: int = 50,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    palette: str | Path | tuple[Sequence[str], Sequence[Color]] | None = None,
    ignore_color: Sequence[int] | None = None,
    max_colors: int = 256,
) -> MaskSurvey:
    """Detect the encoding of a sample of masks and count the sampled pixels per class (see detect_encoding)."""
    if not mask_paths:
        raise DataError("no masks given to detect the mask encoding from")
    if max_files < 1:
        raise ConfigError(f"max_files must be at least 1, got {max_files}")
    sample = _evenly_spaced([Path(p) for p in mask_paths], max_files)
    where = f"{sample[0].parent}: "
    ignore = None if ignore_color is None else as_color(ignore_color, "ignore color")
    table = None
    if palette is not None:
        if foreground is not None:
            raise ConfigError("give either a palette (color masks) or a foreground value (binary masks), not both")
        names, colors = read_palette_file(palette) if isinstance(palette, (str, Path)) else palette
        if len(names) != len(colors):
            raise ConfigError(f"palette has {len(names)} names but {len(colors)} colors")
        # The ignore color leaves the class list, so a labelmap may list its "void" color like any other.
        pairs = [(str(n), tuple(int(v) for v in c)) for n, c in zip(names, colors)]
        pairs = [(n, c) for n, c in pairs if c != ignore]
        table = MaskEncoding("color", colors=[c for _, c in pairs], names=[n for n, _ in pairs], ignore_color=ignore)

    files: list[_FileSurvey] = []
    unreadable: list[DataError] = []
    for path in sample:
        try:
            files.append(_survey_file(path))
        except DataError as exc:  # a bad file is for validation to list; the others still show the encoding
            unreadable.append(exc)
    if not files:
        raise unreadable[0]

    if table is not None or any(f.color for f in files):
        colored = [f.path for f in files if f.color]
        if foreground is not None and len(colored) < len(files):
            # One odd file among grayscale masks: name it, not the folder.
            more = f" (and {len(colored) - 1} more)" if len(colored) > 1 else ""
            raise DataError(f"{colored[0]}: is an RGB color mask{more}, but the other masks are grayscale and "
                            f"foreground {foreground} is for grayscale binary masks; save it as a grayscale mask")
        if foreground is not None:
            raise ConfigError(
                f"{sample[0].parent}: the masks are RGB color masks; a foreground value is for grayscale binary masks"
            )
        survey = _color_survey(files, table, ignore_color=ignore, ignore_index=ignore_index,
                               max_colors=max_colors, where=where)
    elif ignore is not None:
        raise ConfigError(f"{sample[0].parent}: an ignore color is for RGB color masks; these masks are grayscale")
    else:
        survey = _gray_survey(files, foreground=foreground, ignore_index=ignore_index, sample_dir=sample[0].parent)
    return replace(survey, unreadable=tuple(str(exc) for exc in unreadable))


def detect_encoding(
    mask_paths: list[Path],
    *,
    foreground: int | None = None,
    max_files: int = 50,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    palette: str | Path | tuple[Sequence[str], Sequence[Color]] | None = None,
    ignore_color: Sequence[int] | None = None,
    max_colors: int = 256,
) -> tuple[MaskEncoding, int]:
    """Guess (encoding, num_classes) from a sample of masks: 0/1, 0/255, 0/65535 binary; RGB color; else indices.

    palette: a palette file (or (names, colors)) fixing the color table; ignore_color: the RGB color of ignored
    pixels in color masks. JPEG masks (or masks full of compression artifacts) give a `lossy` encoding.
    """
    survey = survey_masks(mask_paths, foreground=foreground, max_files=max_files, ignore_index=ignore_index,
                          palette=palette, ignore_color=ignore_color, max_colors=max_colors)
    return survey.encoding, survey.num_classes


