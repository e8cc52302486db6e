"""The labels of a dataset, decided once: mask encoding, class names, display colors and the ignore value.

`resolve_labels` is the one function that turns the user's options (class list, foreground value, palette
file, ignore color, ignore value) and the masks themselves into a `LabelSpec`; check, train, the bundle,
evaluate and predict all read that spec instead of deciding again. The ignore value is any 0..255 value that
is not a class index 0..K-1 (see `masksmith.data.encoding.ignore_index_problem`): void = K, 200 or 255 work;
an ignore value naming the last class of the class list makes that class the void, left out of the classes
(`masksmith.data.classes.named_void`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masksmith.data.classes import class_list_name, read_class_names, without_named_void
from masksmith.data.detect import MaskSurvey, survey_masks
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MaskEncoding, ignore_index_problem
from masksmith.errors import ConfigError, DataError

Color = tuple[int, int, int]


class ClassCountError(DataError):
    """The class list names a different number of classes than the (color) masks hold."""


@dataclass(frozen=True)
class LabelSpec:
    """How a dataset's masks map to classes, what the classes are called and shown as, and what is ignored."""

    encoding: MaskEncoding
    class_names: tuple[str, ...]
    colors: tuple[Color, ...]  # display colors, one per class: the dataset's own for color masks, else VOC's
    ignore_index: int = DEFAULT_IGNORE_INDEX  # 0..255, never a class index

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise lists (from JSON) to tuples once, so specs compare equal
        set_(self, "class_names", tuple(str(n) for n in self.class_names))
        set_(self, "colors", tuple(tuple(int(c) for c in color) for color in self.colors))
        if len(self.colors) != len(self.class_names):
            raise ConfigError(f"{len(self.colors)} colors for {len(self.class_names)} classes")
        problem = ignore_index_problem(self.ignore_index, len(self.class_names), self.class_names)
        if problem is not None:
            raise ConfigError(problem)
        fixed = self.encoding.num_classes
        if fixed is not None and fixed != len(self.class_names):
            raise ConfigError(f"the {self.encoding.kind} mask encoding has {fixed} classes, "
                              f"but {len(self.class_names)} class names are given")

    @property
    def num_classes(self) -> int:
        """The number of classes K (class indices 0..K-1)."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the bundle's field names (mask_encoding, class_names, colors, ignore_index)."""
        return {"mask_encoding": self.encoding.to_dict(), "class_names": list(self.class_names),
                "colors": [list(c) for c in self.colors], "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSpec:
        """Rebuild from `to_dict` output, or from any mapping holding those four fields (a bundle's metadata)."""
        missing = [key for key in ("mask_encoding", "class_names", "colors") if key not in d]
        if missing:
            raise ConfigError(f"label spec needs mask_encoding, class_names and colors; missing {missing}")
        return cls(MaskEncoding.from_dict(d["mask_encoding"]), tuple(d["class_names"]), tuple(d["colors"]),
                   int(d.get("ignore_index", DEFAULT_IGNORE_INDEX)))


def display_colors(encoding: MaskEncoding, num_classes: int) -> tuple[Color, ...]:
    """Display colors: the dataset's own for color masks (predictions look like the labels), else VOC's."""
    if encoding.kind == "color" and encoding.colors:
        return tuple(encoding.colors)
    from masksmith.visualize import default_colors  # numpy only; imported here to keep data/ free of plotting

    return tuple(tuple(int(v) for v in row) for row in default_colors(num_classes).tolist())


def resolve_labels(
    mask_paths: Sequence[str | Path],
    *,
    classes: str | Path | Sequence[str] | None = None,
    foreground: int | None = None,
    palette: str | Path | None = None,
    ignore_color: Sequence[int] | None = None,
    ignore_index: int | None = None,
    source: str | Path | None = None,
    values_seen: Iterable[int] | None = None,
) -> LabelSpec:
    """The dataset's `LabelSpec`, decided once from the options and (a sample of) the masks; DataError/ConfigError.

    mask_paths: the training masks (detection samples up to 50 of them, evenly spread). classes: a classes.txt
    path or a list of names (None: inferred: background/foreground, the palette file's names, or class_<i>).
    foreground / palette / ignore_color: as for `detect_encoding`. ignore_index: None = 255. source: what the
    class names came from, named in errors about them (default: the classes file, else the masks' folder).
    values_seen: every distinct raw mask value of the whole dataset, when a full scan has them (check does):
    unnamed index masks then get classes up to the largest value anywhere, not just in the sample.

    Index masks holding values beyond the named classes are not an error here: decoding reports them per
    file (check's values_outside_classes, train's validation), naming each mask.
    """
    return labels_from_survey(
        survey_labels(mask_paths, classes=classes, foreground=foreground, palette=palette,
                      ignore_color=ignore_color, ignore_index=ignore_index),
        classes=classes, ignore_index=ignore_index, source=source, values_seen=values_seen,
        where=Path(mask_paths[0]).parent if mask_paths else None)


def survey_labels(mask_paths: Sequence[str | Path], *, classes: str | Path | Sequence[str] | None = None,
                  foreground: int | None = None, palette: str | Path | None = None,
                  ignore_color: Sequence[int] | None = None, ignore_index: int | None = None) -> MaskSurvey:
    """The detection half of `resolve_labels`: the masks' encoding and sampled class pixels (check prints them)."""
    ignore = _ignore_value(ignore_index)
    names = _class_names(classes, ignore)
    if names is not None:  # a named class hidden by the ignore value fails before any mask is read
        problem = ignore_index_problem(ignore, len(names), names)
        if problem is not None:
            raise ConfigError(problem)
    if not mask_paths:
        raise DataError("no masks to decide the classes from")
    return survey_masks(list(mask_paths), foreground=foreground, ignore_index=ignore, palette=palette,
                        ignore_color=ignore_color)


def labels_from_survey(survey: MaskSurvey, *, classes: str | Path | Sequence[str] | None = None,
                       ignore_index: int | None = None, source: str | Path | None = None,
                       values_seen: Iterable[int] | None = None, where: Path | None = None) -> LabelSpec:
    """The naming half of `resolve_labels`: class names, count and colors on top of a detected encoding."""
    ignore = _ignore_value(ignore_index)
    names = _class_names(classes, ignore)
    encoding, detected = survey.encoding, survey.num_classes
    named_by = source or (classes if isinstance(classes, (str, Path)) else None) or where or "class list"
    if names is not None:
        if encoding.kind == "color" and len(names) != detected:
            raise ClassCountError(f"{named_by}: {len(names)} class names given but the color masks hold {detected} colors")
        if encoding.kind == "binary" and len(names) != 2:
            encoding = MaskEncoding("index", lossy=encoding.lossy)  # e.g. masks of 0/1 with three names
    elif encoding.kind == "binary":
        names = ["background", "foreground"]
    elif encoding.kind == "color" and encoding.names:
        names = list(encoding.names)
    else:
        count = detected
        if values_seen is not None and encoding.kind == "index" and not encoding.lossy:
            # Values below the ignore value are classes; higher ones are reported per mask by decoding.
            below = [int(v) for v in values_seen if 0 <= int(v) < min(ignore, 256)]
            count = max(count, max(below, default=-1) + 1)
        names = [f"class_{i}" for i in range(count)]
    problem = ignore_index_problem(ignore, len(names), names)
    if problem is not None:
        raise ConfigError(problem)
    return LabelSpec(encoding, tuple(names), display_colors(encoding, len(names)), ignore)


def _ignore_value(ignore_index: int | None) -> int:
    """The ignore value to use: the given one (0..255), or the default 255."""
    value = DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index
    problem = ignore_index_problem(value, 0)
    if problem is not None:
        raise ConfigError(problem)
    return int(value)


def _class_names(classes: str | Path | Sequence[str] | None, ignore: int) -> list[str] | None:
    """The class names given, without the void that the ignore value names (data.classes' rule)."""
    given = _as_classes(classes)
    names, _ = without_named_void(read_class_names(given), ignore, class_list_name(given))
    return names


def _as_classes(classes: str | Path | Sequence[str] | None) -> str | Path | list[str] | None:
    """read_class_names' argument: a path, or a list (tuples and other sequences of names included)."""
    if classes is None or isinstance(classes, (str, Path)):
        return classes
    return list(classes)
