"""The data commands as a user types them: convert → check → train → predict, and masks written in kind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from masksmith.bundle import read_meta
from masksmith.cli.app import app
from tests.conftest import SHARED_DATA
from tests.helpers import make_shapes_dataset

runner = CliRunner()
LABELME = SHARED_DATA / "labelme-examples" / "semantic_segmentation"
TINY = ["-m", "base_channels=8", "-m", "depth=3", "--size", "32", "--epochs", "1", "-b", "2", "-q"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_labelme_convert_check_train_predict(tmp_path):
    if not LABELME.is_dir():
        pytest.skip("labelme examples not present")
    voc = tmp_path / "voc"
    result = invoke("convert", "labelme", LABELME / "data_annotated", voc, "--labels", LABELME / "labels.txt", "-q")
    assert result.exit_code == 0, result.output
    assert "wrote 3 masks, 21 classes" in result.output
    # The converted folder carries its class_names.txt: check and train find it without --classes.
    result = invoke("check", voc, "--out", tmp_path / "check", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert json.loads((tmp_path / "check" / "report.json").read_text()) == report
    fingerprint = json.loads((tmp_path / "check" / "fingerprint.json").read_text())
    assert fingerprint["num_classes"] == 21 and "aeroplane" in fingerprint["never_seen"]
    result = invoke("train", voc, "--val-fraction", "0.34", "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    assert read_meta(tmp_path / "run" / "model.msb").class_names[:2] == ["_background_", "aeroplane"]
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["choices"]
    result = invoke("predict", tmp_path / "run" / "model.msb", voc / "JPEGImages", "--out", tmp_path / "pred", "-q")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "pred" / "2011_000003.png").size == (500, 338)


def test_check_exit_codes_clean_warnings_and_errors(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    assert invoke("check", data, "--classes", data / "classes.txt", "--out", tmp_path / "c1", "-q").exit_code == 0
    # A class nobody drew is a warning: fine normally, exit 1 under --strict.
    (tmp_path / "four.txt").write_text("background\nred box\nblue box\ngreen box\n")
    args = ["check", data, "--classes", tmp_path / "four.txt", "--out", tmp_path / "c2", "-q"]
    assert invoke(*args).exit_code == 0
    assert invoke(*args, "--strict").exit_code == 1
    (data / "masks" / "s01.png").unlink()
    result = invoke("check", data, "--classes", data / "classes.txt", "--out", tmp_path / "c3", "--json")
    assert result.exit_code == 2
    codes = {problem["code"] for problem in json.loads(result.output)["problems"]}
    assert "unpaired" in codes


@pytest.mark.slow
def test_auto_plan_is_printed_saved_and_respects_given_options(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6, size=(80, 120))
    result = invoke("train", data, "--classes", data / "classes.txt", "--out", tmp_path / "run",
                    "-m", "base_channels=8", "-m", "depth=3", "--epochs", "1", "--size", "32", "-q")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert "size" not in plan["config"]  # given on the command line: not planned
    assert {"batch_size", "mean", "std"} <= set(plan["config"])
    assert all(choice["reason"] for choice in plan["choices"])
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "size: 32" in config and f"batch_size: {plan['config']['batch_size']}" in config
    assert (tmp_path / "run" / "fingerprint.json").is_file()
    no_auto = invoke("train", data, "--classes", data / "classes.txt", "--out", tmp_path / "run2", "--no-auto", *TINY)
    assert no_auto.exit_code == 0 and not (tmp_path / "run2" / "plan.json").exists()


def color_dataset(root: Path) -> tuple[Path, list[tuple[int, int, int]]]:
    """The shapes dataset with RGB color masks: black background, orange and teal boxes."""
    data = make_shapes_dataset(root, count=6)
    colors = [(0, 0, 0), (250, 120, 20), (20, 180, 170)]
    for path in (data / "masks").glob("*.png"):
        index = np.array(Image.open(path))
        Image.fromarray(np.array(colors, np.uint8)[index]).save(path)
    (data / "classes.txt").unlink()
    return data, colors


@pytest.mark.slow
def test_color_masks_train_and_predict_back_in_their_colors(tmp_path):
    data, colors = color_dataset(tmp_path / "color")
    result = invoke("train", data, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    meta = read_meta(tmp_path / "run" / "model.msb")
    assert meta.mask_encoding["kind"] == "color"
    assert [tuple(c) for c in meta.colors] == sorted(colors)  # class order: by packed color value
    result = invoke("predict", tmp_path / "run" / "model.msb", data / "images", "--out", tmp_path / "pred",
                    "--mask-format", "dataset", "-q")
    assert result.exit_code == 0, result.output
    written = np.array(Image.open(tmp_path / "pred" / "s00.png"))
    assert written.shape == (40, 56, 3)
    assert {tuple(c) for c in written.reshape(-1, 3)} <= set(colors)


@pytest.mark.slow
def test_binary_predictions_in_kind_keep_the_datasets_values(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    for path in (data / "masks").glob("*.png"):  # ISBI-style: object = 0, rest = 255
        index = np.array(Image.open(path))
        Image.fromarray(np.where(index == 1, 0, 255).astype(np.uint8)).save(path)
    (data / "classes.txt").unlink()
    assert invoke("train", data, "--foreground", "0", "--out", tmp_path / "run", *TINY).exit_code == 0
    result = invoke("predict", tmp_path / "run" / "model.msb", data / "images" / "s00.jpg", "--out", tmp_path / "p",
                    "--mask-format", "dataset", "-q")
    assert result.exit_code == 0
    assert set(np.unique(np.array(Image.open(tmp_path / "p" / "s00.png")))) <= {0, 255}
    shutil.rmtree(tmp_path / "p")
    result = invoke("predict", tmp_path / "run" / "model.msb", data / "images" / "s00.jpg", "--out", tmp_path / "p",
                    "--mask-format", "jpeg")
    assert result.exit_code == 2 and "mask format" in result.output
