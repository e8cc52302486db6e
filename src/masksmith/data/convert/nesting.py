"""How deeply an annotation file's JSON may nest: the one limit both converters apply right after parsing.

Real Labelme and COCO files nest about 5 levels (file -> shapes -> shape -> points -> point). A crafted
file nested hundreds of levels deep would make json.loads, repr or numpy raise RecursionError (or
ValueError) somewhere deep inside the conversion; refusing it once, at the top, keeps it a per-file error.
"""

from __future__ import annotations

import json
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
