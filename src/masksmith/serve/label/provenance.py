"""Who made each mask: MASKS/.masksmith-labels.json, one small JSON file beside the masks it describes.

    {"format": "masksmith-labels", "version": 1,
     "masks": {"0001.png": {"by": "corrected", "at": "2025-01-31T12:00:00+00:00", "model": "sha256:..."}}}

by: "corrected" (a person edited or accepted a model's prediction) or "drawn" (a person drew it without
one). A mask with no entry was made elsewhere. The name starts with a dot and ends in .json, so pairing
(`discover`), `check` and `train` pass over it as they pass over any file that is no image.
"""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path
from typing import Any

from masksmith.core.fileio import write_text_atomic
from masksmith.errors import DataError

PROVENANCE_NAME = ".masksmith-labels.json"
FORMAT_NAME = "masksmith-labels"
FORMAT_VERSION = 1
MADE_BY = ("corrected", "drawn")
MAX_BYTES = 16 * 2**20  # a few hundred bytes per mask: far above any real dataset's file


def now() -> str:
    """The current time as ISO 8601 with its UTC offset, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _entry(name: str, value: Any, path: Path) -> dict[str, Any]:
    if not (isinstance(value, dict) and value.get("by") in MADE_BY and isinstance(value.get("at"), str)
            and isinstance(value.get("model"), (str, type(None)))):
        raise DataError(f"{path}: damaged entry for {name!r} (expected by: corrected|drawn, at: a time, "
                        "model: a checksum or null); move the file away to start a new record")
    return {"by": value["by"], "at": value["at"], "model": value["model"]}


class Provenance:
    """The record of one mask folder, read once and rewritten atomically on every change."""

    def __init__(self, folder: Path):
        self.path = folder / PROVENANCE_NAME
        self.masks: dict[str, dict[str, Any]] = self._read()
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        path = self.path
        if not path.exists() and not path.is_symlink():
            return {}
        if path.is_symlink() or not path.is_file():
            raise DataError(f"{path}: not a regular file; masksmith label keeps its record there")
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{path}: over {MAX_BYTES // 2**20} MiB, too large for a label record")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise DataError(f"{path}: not a readable label record ({reason}); move it away to start a new one") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
            raise DataError(f"{path}: not a masksmith label record (format {FORMAT_NAME!r} expected)")
        if not isinstance(document.get("version"), int) or document["version"] > FORMAT_VERSION:
            raise DataError(f"{path}: label record version {document.get('version')!r} is not one this "
                            f"masksmith reads (up to {FORMAT_VERSION})")
        masks = document.get("masks")
        if not isinstance(masks, dict):
            raise DataError(f"{path}: the label record has no 'masks' mapping")
        return {str(name): _entry(str(name), value, path) for name, value in masks.items()}

    def get(self, name: str) -> dict[str, Any] | None:
        """The entry of a mask file name, or None when nobody recorded it here."""
        return self.masks.get(name)

    def record(self, name: str, by: str, model: str | None) -> dict[str, Any]:
        """Record who made a mask, now, and rewrite the file atomically; returns the entry."""
        if by not in MADE_BY:
            raise ValueError(f"by must be one of {MADE_BY}, got {by!r}")
        entry = {"by": by, "at": now(), "model": model}
        with self._lock:
            self.masks[name] = entry
            document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "masks": dict(sorted(self.masks.items()))}
            write_text_atomic(self.path, json.dumps(document, indent=1) + "\n")
        return entry
