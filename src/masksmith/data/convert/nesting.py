"""Reading an annotation JSON file: the one place its read, size, encoding and nesting problems are worded.

Real Labelme, COCO and Label Studio files nest about 5 levels (file -> shapes -> shape -> points -> point).
A crafted file nested hundreds of levels deep would make json.loads, repr or numpy raise RecursionError
(or ValueError) somewhere deep inside the conversion; refusing it once, at the top, keeps it a per-file error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from masksmith.errors import DataError

MAX_JSON_DEPTH = 64


def nesting_depth_exceeds(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when lists/objects nest more than `limit` levels deep (iterative: never recurses itself)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            if isinstance(item, (list, dict)):
                stack.append((item, depth + 1))
    return False


def parse_json(text: str, where: str) -> Any:
    """json.loads(text), refusing JSON nested deeper than MAX_JSON_DEPTH with a DataError naming `where`.

    json.JSONDecodeError propagates for the caller to word.
    """
    try:
        data = json.loads(text)
    except RecursionError:
        data = None
        deep = True
    else:
        deep = nesting_depth_exceeds(data)
    if deep:
        raise DataError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep; annotation files nest "
                        "about 5 (a damaged or crafted file?)")
    return data


def load_json_file(path: Path, kind: str = "file", max_bytes: int | None = None) -> Any:
    """Parse the JSON file at `path`; any problem is a one-line DataError naming it (`kind` words the file).

    max_bytes refuses a larger file from its size alone, before reading a byte: json.loads needs several
    times a file's size in memory.
    """
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise DataError(f"{path}: {kind} is {size / 2**20:.1f} MiB, over the limit of "
                            f"{max_bytes / 2**20:.0f} MiB for one file")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {kind} not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {kind}: {exc.strerror or exc}") from None
    if not raw.strip():
        raise DataError(f"{path}: {kind} is empty")
    try:
        return parse_json(raw.decode("utf-8-sig"), str(path))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text (UTF-8) file") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
