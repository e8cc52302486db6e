"""masksmith.check: the report, returned as data, and its files (report.json, fingerprint.json)."""

from __future__ import annotations

import json

import masksmith
from masksmith.data.check import CheckReport
from tests.helpers import make_shapes_dataset


def test_check_returns_the_report_and_writes_its_files(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    result = masksmith.check(data, progress=False, out=tmp_path / "out")
    assert isinstance(result.report, CheckReport) and result.report.exit_code(False) == 0
    assert json.loads(result.report_path.read_text()) == result.report.to_dict()
    assert json.loads(result.fingerprint_path.read_text())["num_classes"] == 3
    default = masksmith.check(data, progress=False)  # runs/check-DATANAME, in the current folder
    assert default.report_path == tmp_path.joinpath("runs", "check-shapes", "report.json").relative_to(tmp_path)
