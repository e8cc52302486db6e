"""The steps besides training as Python calls returning data: masksmith.check, convert_labelme/convert_coco,
export (the CLI prints what they return)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import types

import pytest

import masksmith
from masksmith.data.check import CheckReport
from masksmith.data.convert.common import ConvertReport
from masksmith.errors import ConfigError, MasksmithError
from tests.helpers import make_shapes_dataset


def test_check_returns_the_report_and_writes_its_files(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    result = masksmith.check(data, progress=False, out=tmp_path / "out")
    assert isinstance(result.report, CheckReport) and result.report.exit_code(False) == 0
    assert json.loads(result.report_path.read_text()) == result.report.to_dict()
    assert json.loads(result.fingerprint_path.read_text())["num_classes"] == 3
    default = masksmith.check(data, progress=False)  # runs/check-DATANAME, in the current folder
    assert default.report_path == tmp_path.joinpath("runs", "check-shapes", "report.json").relative_to(tmp_path)


def test_the_converters_are_public_and_return_their_report(tmp_path):
    assert masksmith.convert_labelme.__module__.startswith("masksmith.data.convert")
    annotations = tmp_path / "coco.json"
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    (tmp_path / "images").mkdir()
    try:
        report = masksmith.convert_coco(annotations, tmp_path / "images", tmp_path / "voc", progress=False)
    except MasksmithError:
        pytest.skip("an empty COCO file is refused by this converter")
    assert isinstance(report, ConvertReport) and report.written == []


def test_export_is_the_function_and_no_submodule_shadows_it(tmp_path):
    # The ONNX code lives in masksmith.inference.export, so importing it cannot rebind masksmith.export.
    importlib.import_module("masksmith.inference.export")

    assert type(masksmith) is types.ModuleType  # a plain package module, no class swapped in
    assert importlib.util.find_spec("masksmith.export") is None
    assert callable(masksmith.export) and masksmith.export.__module__ == "masksmith.inference.export"
    from masksmith.inference.export import export_onnx

    assert callable(export_onnx)
    bundle = tmp_path / "model.msb"
    bundle.write_bytes(b"")
    with pytest.raises(ConfigError):  # the output would overwrite the input
        masksmith.export(bundle, bundle)
    with pytest.raises(MasksmithError, match="only 'onnx'"):
        masksmith.export(bundle, export_format="tflite")
