"""Class-name lists: classes.txt files (one name per line, background first) or Python lists."""

from __future__ import annotations

from pathlib import Path

from masksmith.errors import DataError


# Class lists a dataset folder may carry (masksmith convert writes class_names.txt, as labelme2voc does).
CLASS_FILES = ("classes.txt", "class_names.txt")


def check_class_name(name: str, where: str) -> None:
    """DataError unless `name` can be one line of a classes.txt: printable, non-empty, no outer spaces."""
    # class_names.txt holds one name a line, and reading it strips each line: a newline, a control
    # character or a leading/trailing space would come back as a different list of classes.
    if not name or not name.isprintable() or name != name.strip():
        raise DataError(f"{where}: class name {name!r} cannot be a line of a class list "
                        "(it must be printable, non-empty text without leading or trailing spaces)")


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
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read class list: {error}") from None
        source = str(path)
    if len(names) < 2:
        raise DataError(f"{source}: a class list needs at least 2 names (background first), found {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{source}: class names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return names
