"""masksmith.evaluate returns an EvaluationResult: typed scores whose dict form is what metrics.json holds, and
whose result["key"] reads the same entries."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import masksmith
from masksmith.cli.app import app
from masksmith.evaluation.results import ClassScore, EvaluationResult, FailedImage, ImageScore
from tests.helpers import make_shapes_dataset, untrained_bundle


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    data = make_shapes_dataset(root / "data", count=3)
    (data / "images" / "broken.png").write_bytes(b"not a png")
    (data / "masks" / "broken.png").write_bytes(b"not a png")
    bundle = untrained_bundle(root / "model.msb")
    return root, bundle, data, masksmith.evaluate(bundle, data, split="all", out=root / "eval", progress=False)


def test_the_result_is_typed_and_is_what_metrics_json_holds(evaluated):
    root, _, _, result = evaluated
    assert isinstance(result, EvaluationResult) and result.out == root / "eval" and result.html is None
    assert result.images == 3 and len(result.per_image) == 3 and all(isinstance(r, ImageScore) for r in result.per_image)
    assert [type(row) for row in result.per_class] == [ClassScore] * 3
    assert [failed.name for failed in result.failed] == ["broken"] and isinstance(result.failed[0], FailedImage)
    assert "broken.png" in result.failed[0].reason
    saved = json.loads((root / "eval" / "metrics.json").read_text())
    assert result.to_dict(files=False) == saved
    assert EvaluationResult.from_dict(saved).to_dict(files=False) == saved  # nothing lost either way
    # Item access reads the dict form: the documented result["miou"] keeps working.
    assert result["miou"] == result.miou == saved["miou"] and result["out"] == str(root / "eval")
    assert result["per_class"][1]["iou"] == result.per_class[1].iou and result.get("html") is None


def test_the_command_prints_the_typed_result(evaluated, tmp_path):
    _, bundle, data, result = evaluated
    out = tmp_path / "cli"
    run = CliRunner().invoke(app, ["evaluate", str(bundle), str(data), "--split", "all", "-o", str(out)],
                             env={"COLUMNS": "200"})
    assert run.exit_code == 1, run.output  # the broken pair is listed
    assert f"report: {out}" in run.output and "broken.png" in run.output
    assert f"miou: {result.miou:.4f}" in run.output
