"""Prediction inputs: files, folders, globs and manifests expanded into images, each with the relative
path its outputs keep under OUT.

- a file: its own name (OUT/<stem>.png, as always);
- a folder: every image below it (subfolders included, hidden ones and OUT itself left out), relative
  to the folder, so a flat folder gives flat outputs;
- a glob: relative to the pattern's leading folder without wildcards (`data/**/*.png` -> `data`);
- a manifest (.txt/.csv/.parquet, see inference.manifest): relative to the common folder of its entries.
  Entries that are missing or not image files are listed as failures, never stop the run.

The one place that lists input images: predict, the Ray engine and export's int8 calibration all read
the images `expand_inputs` finds (a folder with its subfolders).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from masksmith.data.discover import IMAGE_EXTENSIONS, entry_problem, is_image_file, looks_like_image, unusable_entries
from masksmith.errors import DataError
from masksmith.inference.manifest import is_manifest, read_manifest


@dataclass(frozen=True)
class InputImage:
    """One image to predict and the relative path (suffix included) its outputs are named after."""

    path: Path
    relative: Path


def _has_glob_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _inside(path: Path, folder: Path | None) -> bool:
    """True when `path` is `folder` or below it (both resolved; links followed)."""
    if folder is None:
        return False
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def _walk(folder: Path, exclude: Path | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Images below `folder` (sorted by relative path) and the image-named entries that cannot be read."""
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    # followlinks=False: a linked folder could loop back to an ancestor; linked *files* are read.
    for root, dirs, _ in os.walk(folder, followlinks=False):
        here = Path(root)
        # Hidden folders (.git, .ipynb_checkpoints) and the output folder (a rerun must not read its own
        # masks as images) are not entered.
        # Image-named folders (x.png/) are listed as unreadable entries, as they always were, not entered.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(d).suffix.lower() not in IMAGE_EXTENSIONS
                         and not _inside(here / d, exclude))
        found.extend(p for p in sorted(here.iterdir()) if is_image_file(p))
        skipped.extend((p, entry_problem(p)) for p in unusable_entries(here) if not _inside(p, exclude))
    found.sort(key=lambda p: p.relative_to(folder).parts)
    return found, skipped


def _glob_base(pattern: str) -> Path:
    """The leading folder of a pattern that holds no wildcard: every match lies below it."""
    parts = Path(pattern).parts
    plain: list[str] = []
    for part in parts[:-1]:
        if _has_glob_magic(part):
            break
        plain.append(part)
    return Path(*plain) if plain else Path(".")


def _file_or_glob(item: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """One image file, or a glob's image files (sorted; `**` descends), and the image-named matches that
    cannot be read; DataError for a missing file, a non-image file or a pattern that matches no image."""
    path = Path(item)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{path}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return [path], []
    if _has_glob_magic(str(item)):
        matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
        found = [p for p in matches if is_image_file(p)]
        bad = [p for p in matches if looks_like_image(p) and not p.is_file()]
        if not found and not bad:
            raise DataError(f"{item}: pattern matches no image files")
        return found, [(p, entry_problem(p)) for p in bad]
    if os.path.islink(path):
        raise DataError(entry_problem(path))  # named on the command line: say why it cannot be read
    raise DataError(f"{path}: no such file or folder")


def _from_manifest(manifest: Path) -> tuple[list[InputImage], list[tuple[Path, str]]]:
    entries = list(dict.fromkeys(read_manifest(manifest)))
    # The common folder of the image entries: outputs keep the layout below it and never leave OUT.
    # Non-image entries do not count, so one stray line cannot shift every output's name.
    named = [os.path.abspath(p.parent) for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
    base = os.path.commonpath(named) if named else ""
    items: list[InputImage] = []
    failed: list[tuple[Path, str]] = []
    for path in entries:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            failed.append((path, f"{path}: not an image file (listed in {manifest}; expected one of "
                                 f"{', '.join(IMAGE_EXTENSIONS)})"))
        elif not path.is_file():
            reason = entry_problem(path) if os.path.lexists(path) else f"{path}: no such file"
            failed.append((path, f"{reason} (listed in {manifest})"))
        else:
            items.append(InputImage(path, Path(os.path.relpath(os.path.abspath(path), base))))
    return items, failed


def expand_inputs(inputs: list[str | Path], exclude: Path | None = None
                  ) -> tuple[list[InputImage], list[tuple[Path, str]]]:
    """Expand files, folders, globs and manifests into (images, [(entry, reason)] that cannot be read).

    `exclude` (the output folder) is never entered by a folder walk or matched by a glob.
    """
    items: list[InputImage] = []
    failed: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found, bad = _walk(path, exclude)
            if not found and not bad:
                raise DataError(f"{path}: folder has no images (expected files ending in "
                                f"{', '.join(IMAGE_EXTENSIONS)}, in it or its subfolders)")
            items.extend(InputImage(p, p.relative_to(path)) for p in found)
            failed.extend(bad)
        elif is_manifest(path):
            listed, bad = _from_manifest(path)
            items.extend(listed)
            failed.extend(bad)
        elif not path.exists() and _has_glob_magic(str(item)):
            paths, bad = _file_or_glob(item)
            base = _glob_base(str(item))
            items.extend(InputImage(p, Path(os.path.relpath(p, base))) for p in paths if not _inside(p, exclude))
            failed.extend(bad)
        else:
            paths, bad = _file_or_glob(item)
            items.extend(InputImage(p, Path(p.name)) for p in paths)
            failed.extend(bad)
    seen: set[Path] = set()
    unique = [item for item in items if not (item.path in seen or seen.add(item.path))]  # first one wins
    return unique, list(dict.fromkeys(failed))


def manifest_inputs(inputs: list[str | Path]) -> list[Path]:
    """The manifests among `inputs` (files the run reads besides the images)."""
    return [Path(item) for item in inputs if is_manifest(item)]

