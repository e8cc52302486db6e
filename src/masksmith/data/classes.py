"""Class-name lists: classes.txt files (one name per line, background first) or Python lists, and the one rule
every class name obeys wherever it enters (classes files, configs, palettes, converters, bundles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from masksmith.errors import DataError

# Class lists a dataset folder may carry (masksmith convert writes class_names.txt, as labelme2voc does).
CLASS_FILES = ("classes.txt", "class_names.txt")
# A name is a label in a legend, a table cell, a line of class_names.txt: short, one line, printable.
MAX_CLASS_NAME_CHARS = 64


def class_name_problem(name: Any) -> str | None:
    """What is wrong with one class name, or None. A name is text, not empty, without spaces around it, with
    printable characters only (no line break, tab or other control character) and at most
    MAX_CLASS_NAME_CHARS characters: such a name stays one line in every file and legend it is written to."""
    if not isinstance(name, str):
        return f"class name {name!r} is not text"
    shown = repr(name) if len(name) <= MAX_CLASS_NAME_CHARS else repr(name[:MAX_CLASS_NAME_CHARS]) + "..."
    if not name.strip():
        return f"class name {shown} is empty"
    if not name.isprintable():
        return (f"class name {shown} holds a line break, tab or other control character; a class name is "
                "one line of printable text")
    if name != name.strip():
        return f"class name {shown} has spaces at its start or end"
    if len(name) > MAX_CLASS_NAME_CHARS:
        return f"class name {shown} is {len(name)} characters long; at most {MAX_CLASS_NAME_CHARS}"
    return None


def class_names_problem(names: Iterable[Any]) -> str | None:
    """The first class name's problem (class_name_problem), or None when every name is valid."""
    return next((problem for name in names if (problem := class_name_problem(name)) is not None), None)


def validate_class_names(names: Iterable[Any], source: str | Path) -> list[str]:
    """The names as a list, or a DataError naming `source` (a file, a config, a converter's input) and the first
    invalid name (class_name_problem's rule)."""
    names = list(names)
    problem = class_names_problem(names)
    if problem is not None:
        raise DataError(f"{source}: {problem}")
    return names


def find_class_file(root: str | Path) -> Path | None:
    """The class list shipped in a dataset folder (classes.txt or class_names.txt), or None."""
    return next((Path(root) / name for name in CLASS_FILES if (Path(root) / name).is_file()), None)


def read_class_names(classes: str | Path | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Class names from a list or a classes.txt file (one per line, blank lines ignored); None stays None."""
    if classes is None:
        return None
    if isinstance(classes, (list, tuple)):
        source, names = "class list", [str(name) for name in classes]
    else:
        path = Path(classes)
        try:
            # Split at line ends only: splitlines would also split a name at \x1c or \u2028, silently.
            names = [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read class list: {error}") from None
        source = str(path)
    validate_class_names(names, source)
    if len(names) < 2:
        raise DataError(f"{source}: a class list needs at least 2 names (background first), found {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{source}: class names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return names
