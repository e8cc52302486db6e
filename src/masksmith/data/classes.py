"""Class-name lists: classes.txt files (one name per line, background first) or Python lists, the one rule
every class name obeys wherever it enters (classes files, configs, palettes, converters, bundles), and the one
rule for a void class named in the list (`named_void` when an ignore value names it, `proposed_void` when none
is given)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from masksmith.errors import ConfigError, DataError

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


def class_list_name(classes: Any) -> str:
    """How errors and log lines name a class list: its file, or "the class list" for names given as a list."""
    return str(classes) if isinstance(classes, (str, Path)) else "the class list"


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


# The void class: many datasets ship their "unlabelled" class as a line of the class list (CamVid's 'Void',
# Cityscapes' 'unlabeled', Labelme's '__ignore__') and mark its pixels with that index in the masks.
# Names compared case-insensitively, with a typographic apostrophe read as a plain one.
VOID_NAMES = frozenset({"void", "unlabelled", "unlabeled", "ignore", "don't care", "dont care", "__ignore__"})


def is_void_name(name: str) -> bool:
    """Whether a class name is one datasets give their void (unlabelled, don't-care) class."""
    return name.strip().casefold().replace("\u2019", "'") in VOID_NAMES


@dataclass(frozen=True)
class VoidClass:
    """A class of the class list that is the dataset's void: its index is the ignore value, and it is left out of
    the classes. Only the last class can be (`named_void`): leaving it out renumbers no other class."""

    index: int
    name: str
    listed: int  # the names in the class list, the void's included
    source: str  # the class list it is named in

    def names_without(self, names: Sequence[str]) -> list[str]:
        """The class names with the void left out."""
        return list(names[: self.index])

    def text(self) -> str:
        """One line saying what was decided."""
        return (f"void: ignore_index {self.index} is class {self.index} {self.name!r}, the last of the {self.listed} "
                f"names in {self.source}: it is the void (its pixels count for no loss and no metric) and is left "
                f"out of the classes, {self.index} remain")


def named_void(names: Sequence[str] | None, ignore_index: Any, source: str | Path = "the class list") -> VoidClass | None:
    """The class the ignore value names, taken as the void; None when it names no class of `names`.

    A ConfigError when it names class 0 (the background; every other class would be renumbered), a class in the
    middle (the classes after it would be renumbered), or the second of two classes (one class would be left)."""
    if names is None or isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        return None
    if not 0 <= ignore_index < len(names):
        return None
    ignore_index = int(ignore_index)
    name, count = names[ignore_index], len(names)
    if ignore_index == 0:
        raise ConfigError(f"{source}: ignore_index 0 is class 0 {name!r}, the background, which cannot be the void: "
                          f"every other class would be renumbered; give the value the masks mark void pixels with "
                          f"({count}..255, e.g. 255)")
    if ignore_index < count - 1:
        raise ConfigError(f"{source}: ignore_index {ignore_index} is class {ignore_index} {name!r}, in the middle of "
                          f"the {count} classes: only the last class can be the void (the {count - 1 - ignore_index} "
                          f"after it would be renumbered); give the value the masks mark void pixels with "
                          f"({count}..255, e.g. 255)")
    if count < 3:
        raise ConfigError(f"{source}: ignore_index {ignore_index} is class {ignore_index} {name!r}; as the void it "
                          f"would leave a single class; give the value the masks mark void pixels with "
                          f"({count}..255, e.g. 255)")
    return VoidClass(ignore_index, name, count, str(source))


def without_named_void(names: list[str] | None, ignore_index: Any,
                       source: str | Path = "the class list") -> tuple[list[str] | None, VoidClass | None]:
    """The class names with the void that the ignore value names left out (`named_void`), and that void."""
    void = named_void(names, ignore_index, source)
    return (void.names_without(names) if void is not None and names is not None else names), void


@dataclass(frozen=True)
class VoidProposal:
    """What the class list says about the ignore value when none is given: `index` to propose (None: nothing to
    propose) and one line saying why."""

    index: int | None
    reason: str


def proposed_void(names: Sequence[str] | None, source: str | Path = "the class list") -> VoidProposal | None:
    """The ignore value a class list proposes: its last class when that alone has a void name (`is_void_name`).

    None when no class has a void name, or only one in the middle (a real class may be called so). A proposal
    without an index, saying why, when the void name is class 0 (the background: every class would be renumbered)
    or several classes have void names (which one the masks use is the user's to say)."""
    if not names:
        return None
    voids = [i for i, name in enumerate(names) if is_void_name(name)]
    count = len(names)
    if not voids or (len(voids) == 1 and 0 < voids[0] < count - 1):
        return None
    listed = ", ".join(f"{i} {names[i]!r}" for i in voids)
    if len(voids) > 1:
        return VoidProposal(None, f"classes {listed} of {source} all have void names: none is taken as the void; "
                                  f"give --ignore-index with the one the masks use")
    if voids[0] == 0:
        return VoidProposal(None, f"class 0 {names[0]!r} of {source} has a void name, but class 0 is the background "
                                  f"and stays a class (as the void every other class would be renumbered)")
    if count < 3:
        return None
    index = count - 1
    return VoidProposal(index, f"ignore_index {index}: class {index} {names[index]!r}, the last of the {count} names in "
                               f"{source}, is a void name: it is the void (its pixels count for no loss and no "
                               f"metric), left out of the classes; --ignore-index chooses another value")
