"""The user's steps besides training, as Python calls that return data (the CLI only prints it):
`masksmith.check`, `masksmith.export`; the converters are `masksmith.convert_labelme` / `convert_coco`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from masksmith.data.encoding import DEFAULT_IGNORE_INDEX
from masksmith.errors import MasksmithError
from masksmith.fileio import refuse_overwrite, require_writable, write_text_atomic

if TYPE_CHECKING:
    from masksmith.data.check import CheckReport
    from masksmith.onnx_export import ExportReport


@dataclass
class CheckResult:
    """A dataset check: the report and where its JSON and the fingerprint were written."""

    report: "CheckReport"
    report_path: Path
    fingerprint_path: Path


def check(data: str | Path, *, classes: str | Path | list[str] | None = None, foreground: int | None = None,
          mask_suffix: str | None = None, ignore_index: int = DEFAULT_IGNORE_INDEX, palette: str | Path | None = None,
          ignore_color: Sequence[int] | None = None, workers: int | None = None, progress: bool = True,
          out: str | Path | None = None) -> CheckResult:
    """Check a dataset (pairing, readability, sizes, mask values, classes, duplicates); writes OUT/report.json
    and OUT/fingerprint.json (default OUT: runs/check-DATANAME). Problems are in the report, not raised."""
    from masksmith.data.check import check_dataset, write_fingerprint

    folder = Path(out) if out is not None else Path("runs") / f"check-{Path(data).resolve().name}"
    if Path(data).is_dir():  # a missing DATA is check_dataset's one-line error, before a folder is made for it
        require_writable(folder)  # before the check, which may read for minutes
    report = check_dataset(data, classes=classes, foreground=foreground, mask_suffix=mask_suffix,
                           ignore_index=ignore_index, workers=workers, progress=progress, palette=palette,
                           ignore_color=tuple(ignore_color) if ignore_color else None)
    report_path = folder / "report.json"
    write_text_atomic(report_path, json.dumps(report.to_dict(), indent=1))
    return CheckResult(report, report_path, write_fingerprint(report, folder / "fingerprint.json"))


def export(bundle: str | Path, out: str | Path | None = None, *, export_format: str = "onnx", opset: int = 18,
           int8: bool = False, calibration: str | Path | Sequence[str | Path] | None = None) -> "ExportReport":
    """Export a bundle to ONNX (fp32, or int8 calibrated on real images), verified against PyTorch; default
    OUT: the bundle's name with .onnx (.int8.onnx with int8)."""
    from masksmith.onnx_export import export_onnx

    if export_format != "onnx":
        raise MasksmithError(f"format {export_format!r}: only 'onnx' is supported")
    bundle = Path(bundle)
    target = Path(out) if out is not None else bundle.with_suffix(".int8.onnx" if int8 else ".onnx")
    refuse_overwrite([bundle], [target])
    require_writable(target.parent)
    return export_onnx(bundle, target, opset=opset, int8=int8, calibration=calibration)
