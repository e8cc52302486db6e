"""Manifests: files that list the images to predict (text, CSV or Parquet), read into absolute-or-relative paths.

- `.txt`: one path per line; blank lines are skipped, surrounding whitespace is stripped.
- `.csv`: a header row with a `path` column (other columns are ignored).
- `.parquet`: a string `path` column (needs pyarrow, which the ray extra brings).

Relative entries are resolved against the manifest's own folder, so a manifest travels with its images.
Absolute entries are taken as they are (a manifest is the user's own list; what is read is only ever
decoded as an image, and where outputs go never depends on it but on the entries' common folder).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from masksmith.errors import DataError, MasksmithError

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")
PATH_COLUMN = "path"
# Linux's PATH_MAX: a longer "path" is not a path, and reading it line by line stays bounded.
MAX_PATH_CHARS = 4096
# A bound on what one manifest may list, checked before the entries are held in memory.
MAX_ENTRIES = 10_000_000


def is_manifest(path: str | os.PathLike) -> bool:
    """True for an existing regular file whose name ends in .txt, .csv or .parquet."""
    path = Path(path)
    return path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file()


def read_manifest(path: str | os.PathLike) -> list[Path]:
    """The image paths a manifest lists, in its order, relative ones resolved against its folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise DataError(f"{path}: not a manifest (expected one of {', '.join(MANIFEST_SUFFIXES)})")
    try:
        if suffix == ".parquet":
            entries = _parquet_entries(path)
        else:
            entries = _text_entries(path) if suffix == ".txt" else _csv_entries(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None
    if not entries:
        raise DataError(f"{path}: manifest lists no images")
    folder = path.parent
    # normpath, not resolve: '..' is collapsed but symbolic links keep the names the user gave.
    return [Path(os.path.normpath(folder / entry)) for entry in entries]


def _checked(entry: str, path: Path, where: str) -> str:
    """One entry, refused when it cannot be a path (empty, too long, NUL)."""
    if not entry:
        raise DataError(f"{path}: {where} has an empty path")
    if len(entry) > MAX_PATH_CHARS:
        raise DataError(f"{path}: {where} is {len(entry)} characters long; a path is at most {MAX_PATH_CHARS}")
    if "\x00" in entry:
        raise DataError(f"{path}: {where} contains a NUL byte (is this a binary file?)")
    return entry


def _too_many(path: Path, count: int) -> DataError:
    return DataError(f"{path}: manifest lists more than {MAX_ENTRIES} entries ({count}); split it")


def _text_entries(path: Path) -> list[str]:
    entries: list[str] = []
    with open(path, "rb") as handle:
        number = 0
        while True:
            # readline with a limit: one gigantic line is refused without being held in memory.
            raw = handle.readline(MAX_PATH_CHARS * 4 + 2)
            if not raw:
                break
            number += 1
            if not raw.endswith(b"\n") and len(raw) > MAX_PATH_CHARS * 4:
                raise DataError(f"{path}: line {number} is longer than {MAX_PATH_CHARS} characters; "
                                "a text manifest holds one path per line")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {number} is not UTF-8 text (is this a binary file?)") from None
            if line:
                entries.append(_checked(line, path, f"line {number}"))
                if len(entries) > MAX_ENTRIES:
                    raise _too_many(path, len(entries))
    return entries


def _csv_entries(path: Path) -> list[str]:
    entries: list[str] = []
    # utf-8-sig: spreadsheet programs put a byte-order mark before the header.
    with open(path, encoding="utf-8-sig", newline="") as text:
        try:
            reader = csv.DictReader(text)
            columns = reader.fieldnames
            if not columns:
                return []
            if PATH_COLUMN not in columns:
                shown = ", ".join(repr(name) for name in columns[:10])
                raise DataError(f"{path}: no {PATH_COLUMN!r} column in the header (columns: {shown})")
            if columns.count(PATH_COLUMN) > 1:
                # DictReader would keep the last one's value and silently drop the first's.
                raise DataError(f"{path}: the header has {columns.count(PATH_COLUMN)} {PATH_COLUMN!r} columns; "
                                "keep one")
            for row in reader:
                where = f"row {reader.line_num}"
                entries.append(_checked((row.get(PATH_COLUMN) or "").strip(), path, where))
                if len(entries) > MAX_ENTRIES:
                    raise _too_many(path, len(entries))
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text (is this a binary file?)") from None
        except csv.Error as exc:
            # e.g. "field larger than field limit", "line contains NUL"
            raise DataError(f"{path}: not a readable CSV manifest: {exc}") from None
    return entries


def _parquet_entries(path: Path) -> list[str]:
    try:
        import pyarrow
        import pyarrow.parquet as parquet
    except ImportError:
        raise MasksmithError(f"{path}: reading a Parquet manifest needs pyarrow: "
                             "pip install 'masksmith[ray]' (or pyarrow)") from None
    try:
        metadata = parquet.read_metadata(path)
        schema = metadata.schema.to_arrow_schema()
    except (pyarrow.ArrowException, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    if PATH_COLUMN not in schema.names:
        shown = ", ".join(repr(name) for name in schema.names[:10])
        raise DataError(f"{path}: no {PATH_COLUMN!r} column (columns: {shown or 'none'})")
    if schema.names.count(PATH_COLUMN) > 1:
        raise DataError(f"{path}: {schema.names.count(PATH_COLUMN)} columns are named {PATH_COLUMN!r}; keep one")
    kind = schema.field(PATH_COLUMN).type
    if not (pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind)):
        raise DataError(f"{path}: the {PATH_COLUMN!r} column holds {kind}, not text")
    # Counted from the footer before any row is decoded: a small file may claim billions of rows.
    if metadata.num_rows > MAX_ENTRIES:
        raise _too_many(path, metadata.num_rows)
    try:
        column = parquet.read_table(path, columns=[PATH_COLUMN]).column(PATH_COLUMN).to_pylist()
    except (pyarrow.ArrowException, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    return [_checked((entry or "").strip(), path, f"row {number}") for number, entry in enumerate(column, 1)]
