"""`masksmith.check`: check a dataset and write its report and fingerprint files (the CLI only prints the report)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from masksmith.core.fileio import require_writable, write_text_atomic
from masksmith.data.check import CheckReport, check_dataset, write_fingerprint
from masksmith.data.check.config import CheckConfig
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX


@dataclass
class CheckResult:
    """A dataset check: the report and where its JSON and the fingerprint were written."""

    report: CheckReport
    report_path: Path
    fingerprint_path: Path

    def to_json(self) -> str:
        """The report as report.json holds it and `masksmith check --json` prints it."""
        return json.dumps(self.report.to_dict(), indent=1)


def check(data: str | Path, *, classes: str | Path | list[str] | None = None, foreground: int | None = None,
          mask_suffix: str | None = None, ignore_index: int = DEFAULT_IGNORE_INDEX, palette: str | Path | None = None,
          ignore_color: Sequence[int] | None = None, workers: int | None = None, progress: bool = True,
          out: str | Path | None = None) -> CheckResult:
    """Check a dataset (pairing, readability, sizes, mask values, classes, duplicates); writes OUT/report.json
    and OUT/fingerprint.json (default OUT: runs/check-DATANAME). Problems are in the report, not raised.
    The keywords are CheckConfig's (data/check/config.py), checked by it before anything is read."""
    CheckConfig.of(classes=classes, foreground=foreground, mask_suffix=mask_suffix, ignore_index=ignore_index,
                   palette=palette, ignore_color=ignore_color, workers=workers, out=out)
    folder = Path(out) if out is not None else Path("runs") / f"check-{Path(data).resolve().name}"
    if Path(data).is_dir():  # a missing DATA is check_dataset's one-line error, before a folder is made for it
        require_writable(folder)  # before the check, which may read for minutes
    report = check_dataset(data, classes=classes, foreground=foreground, mask_suffix=mask_suffix,
                           ignore_index=ignore_index, workers=workers, progress=progress, palette=palette,
                           ignore_color=tuple(ignore_color) if ignore_color else None)
    result = CheckResult(report, folder / "report.json", folder / "fingerprint.json")
    write_text_atomic(result.report_path, result.to_json())
    write_fingerprint(report, result.fingerprint_path)
    return result
