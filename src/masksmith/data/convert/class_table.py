"""The class list of a conversion: the tool's labels in the tool's order, background first, ignore set aside.

Every converter but Labelme's (which has its own labels.txt rules) builds its classes here, so the
conventions are the same whatever tool made the annotations:

* a label named ``_background_`` / ``background`` / ``__background__`` (any case) is class 0 under its
  own name; without one, ``background`` is added as class 0;
* a label named ``__ignore__`` (Labelme's name, when the converter honours it) is no class: its regions
  are the ignore value, which training and evaluation skip;
* every other label is 1, 2, ... in the order given; names must be printable text of one line, since
  ``class_names.txt`` lists one a line.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

from masksmith.data.classes import class_name_problem
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MAX_CLASSES
from masksmith.errors import DataError

__all__ = ["BACKGROUND_NAMES", "IGNORE_LABEL", "class_table", "read_label_lines"]

BACKGROUND_NAMES = ("_background_", "background", "__background__")
IGNORE_LABEL = "__ignore__"


def class_table(entries: Sequence[tuple[Hashable, str]], where: str, *,
                ignore_label: bool = True) -> tuple[list[str], dict[Hashable, int]]:
    """Class names (background first) and key → class index for the tool's (key, name) labels in order.

    With ignore_label, the key of a label named IGNORE_LABEL maps to DEFAULT_IGNORE_INDEX.
    """
    keys_seen: set[Hashable] = set()
    for key, name in entries:
        if key in keys_seen:
            raise DataError(f"{where}: label {key!r} is listed twice")
        keys_seen.add(key)
        if (problem := class_name_problem(name)) is not None:
            raise DataError(f"{where}: {problem}")
    ignored = [(key, name) for key, name in entries if ignore_label and name == IGNORE_LABEL]
    labels = [(key, name) for key, name in entries if (key, name) not in ignored]
    background = [(key, name) for key, name in labels if name.strip().lower() in BACKGROUND_NAMES]
    if len(background) > 1:
        raise DataError(f"{where}: more than one background label: {[name for _, name in background]}")
    others = [(key, name) for key, name in labels if (key, name) not in background]
    names = [background[0][1] if background else "background"] + [name for _, name in others]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise DataError(f"{where}: label names repeat: {twice}")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{where}: {len(names)} classes do not fit 8-bit masks (at most {MAX_CLASSES}, "
                        f"because {DEFAULT_IGNORE_INDEX} means ignore)")
    index: dict[Hashable, int] = {key: i + 1 for i, (key, _) in enumerate(others)}
    index.update({key: 0 for key, _ in background})
    index.update({key: DEFAULT_IGNORE_INDEX for key, _ in ignored})
    return names, index


def read_label_lines(path: Path) -> list[str]:
    """The lines of a labels file (one label a line), stripped; blank lines skipped."""
    try:
        # Split at line ends only: splitlines would also split a name at \x1c or \u2028, silently.
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except FileNotFoundError:
        raise DataError(f"{path}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read labels file: {exc}") from None
    return [line.strip() for line in lines if line.strip()]
