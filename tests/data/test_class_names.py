"""Reliability: class names are one line of printable text wherever they enter (classes files, configs, palettes,
converters, bundles), and file and class names are made safe for every medium they are written to (images,
plots, Markdown, HTML, the terminal)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import masksmith
from masksmith.bundle import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY, BundleMeta, read_meta, save_bundle
from masksmith.cli.app import app
from masksmith.config import resolve_config
from masksmith.data.classes import read_class_names
from masksmith.data.convert import convert_coco, convert_labelme
from masksmith.data.palette import read_palette_file
from masksmith.errors import BundleError, ConfigError, DataError
from masksmith.models import build_model
from masksmith.visualize import comparison_grid, plot_confusion, plot_per_class

BAD_NAMES = ["two\nlines", "carriage\rreturn", "tab\there", "escape\x1b[31m", "line\u2028separator", "", "  ",
             " padded", "x" * 65]
GOOD_NAMES = ["background", "red box", "café", "人", "a|b [/x] $\\foo$", "x" * 64]


# What a line of a classes file can hold (a line break ends the line, spaces around it are stripped).
BAD_LINES = ["tab\there", "escape\x1b[31m", "line\u2028separator", "nul\x00", "x" * 65]


@pytest.mark.parametrize("name", BAD_LINES, ids=repr)
def test_a_classes_file_with_a_bad_name_is_one_error_naming_it(tmp_path, name):
    path = tmp_path / "classes.txt"
    path.write_text(f"background\n{name}\nthird\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: class name "):
        read_class_names(path)


@pytest.mark.parametrize("name", GOOD_NAMES, ids=repr)
def test_printable_names_up_to_64_characters_are_accepted(tmp_path, name):
    path = tmp_path / "classes.txt"
    path.write_text(f"background\n{name}\n" if name != "background" else "background\nother\n", encoding="utf-8")
    assert name in read_class_names(path) or name == "background"


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_config_list_with_a_bad_name_is_refused(tmp_path, name):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"data": str(tmp_path), "classes": ["background", name]}))
    with pytest.raises(ConfigError, match=r"config\.yaml: invalid configuration: classes: .*class name"):
        resolve_config(config)


def test_train_with_a_newline_class_name_fails_before_the_run_folder_exists(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"data": str(tmp_path), "classes": ["background", "a\nb"], "out": "run"}))
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "class name 'a\\nb' holds a line break" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_a_palette_file_with_a_tab_in_a_name_is_refused(tmp_path):
    palette = tmp_path / "labelmap.txt"
    palette.write_text("background:0,0,0::\nred\tbox:255,0,0::\n")
    with pytest.raises(DataError, match=r"labelmap\.txt: line 2: class name 'red\\tbox' holds"):
        read_palette_file(palette)


def _labelme_file(folder: Path, stem: str, label: str) -> None:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / f"{stem}.png")
    shape = {"label": label, "points": [[1, 1], [6, 1], [6, 6]], "shape_type": "polygon"}
    (folder / f"{stem}.json").write_text(json.dumps({"shapes": [shape], "imagePath": f"{stem}.png"}))


def test_convert_labelme_fails_the_file_with_a_bad_label_and_lists_only_valid_classes(tmp_path):
    source = tmp_path / "labelme"
    source.mkdir()
    _labelme_file(source, "good", "cat")
    _labelme_file(source, "bad", "dog\nbird")
    report = convert_labelme(source, tmp_path / "out", progress=False)
    assert report.written == ["good"]
    assert [path.name for path, _ in report.failed] == ["bad.json"]
    assert "class name 'dog\\nbird' holds a line break" in report.failed[0][1]
    assert (tmp_path / "out" / "class_names.txt").read_text().split("\n") == ["_background_", "cat"]


def test_convert_labelme_refuses_a_labels_file_with_a_control_character(tmp_path):
    source = tmp_path / "labelme"
    source.mkdir()
    _labelme_file(source, "good", "cat")
    (source / "labels.txt").write_text("__ignore__\n_background_\ncat\x07\n")
    with pytest.raises(DataError, match=r"labels\.txt: class name 'cat\\x07' holds"):
        convert_labelme(source, tmp_path / "out", source / "labels.txt", progress=False)
    assert not (tmp_path / "out").exists()


def test_convert_coco_refuses_a_category_name_with_a_newline(tmp_path):
    # What `predict --format coco` wrote for a model with such a class: it became 3 lines of class_names.txt.
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    annotations = tmp_path / "coco.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
                                       "annotations": [], "categories": [{"id": 1, "name": "two\nlines"}]}))
    with pytest.raises(DataError, match=r"coco\.json: category id 1: class name 'two\\nlines' holds"):
        convert_coco(annotations, tmp_path / "images", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "class_names.txt").exists()


def _meta(**changes) -> dict:
    values = dict(model="unet", model_options={"depth": 2, "base_channels": 4}, in_channels=3, out_channels=3,
                  class_names=["bg", "a", "b"], colors=[[0, 0, 0], [255, 0, 0], [0, 0, 255]], size=32,
                  resize="random_crop", mean=[0.5] * 3, std=[0.25] * 3, mask_encoding={"kind": "index"})
    return {**values, **changes}


def test_a_bundle_whose_class_name_holds_a_newline_is_refused_as_damaged(tmp_path):
    from safetensors.torch import save_file

    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "meta": _meta(class_names=["bg", "a\nb", "c"])}
    path = tmp_path / "model.msb"
    save_file({"w": torch.zeros(1)}, str(path), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(BundleError, match=r"model\.msb: damaged masksmith metadata \(class_names: class name 'a\\nb'"):
        read_meta(path)
    with pytest.raises(Exception, match="class name 'a\\\\nb'"):
        BundleMeta(**_meta(class_names=["bg", "a\nb", "c"]))


# --- text made safe for its medium ------------------------------------------------------------------------------

HOSTILE_CLASSES = ["background", "pipe | [/b] name", "$\\foo$ cost"]


@pytest.fixture
def hostile_bundle(tmp_path: Path) -> Path:
    """An untrained 3-class bundle whose names hold Markdown, rich markup and matplotlib math (all printable)."""
    torch.manual_seed(0)
    network = build_model("unet", 3, 3, depth=2, base_channels=4)
    return save_bundle(tmp_path / "model.msb", network.state_dict(), BundleMeta(**_meta(class_names=HOSTILE_CLASSES)))


def _dataset(root: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(rng.integers(0, 3, (24, 32), dtype=np.uint8)).save(root / "masks" / f"{name}.png")
    return root


@pytest.mark.slow
def test_evaluate_an_image_named_with_a_newline_writes_every_report(tmp_path, hostile_bundle):
    data = _dataset(tmp_path / "data", ["two\nlines", "tab\tand\x1bescape", "plain"])
    result = CliRunner().invoke(app, ["evaluate", str(hostile_bundle), str(data), "--split", "all", "--html",
                                      "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "eval"
    for name in ("gallery.png", "report.md", "report.html", "confusion.png", "per_class.png"):
        assert (out / name).is_file(), name
    assert "[/b]" in result.output, result.output  # the terminal's table shows the name as it is (maybe wrapped)
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith(("| 0 |", "| 1 |", "| 2 |"))]
    # One row per class, each with the table's 8 cells: no name broke a row or started another.
    assert [len(line.replace("\\|", "").split("|")) - 2 for line in rows] == [8, 8, 8]
    assert "pipe \\| \\[/b\\] name" in (out / "report.md").read_text()
    assert "pipe | [/b] name" in (out / "report.html").read_text()  # HTML-escaped: nothing to escape here


def test_gallery_captions_and_legends_with_control_characters_are_drawn():
    rows = [{"image": np.zeros((16, 16, 3), np.uint8), "truth": None, "prediction": np.ones((16, 16), np.uint8),
             "caption": "best: two\nlines\r\x1b[0m " + "long " * 200 + "(Dice 1.000)"}]
    grid = comparison_grid(rows, np.array([[0, 0, 0], [255, 0, 0]], np.uint8), ["bg", "cat\ndog"], ignore_index=255,
                           title="a\ntitle")
    assert grid.ndim == 3 and grid.shape[1] < 2000


def test_plots_draw_class_names_holding_dollar_signs(tmp_path):
    names = ["bg", "$\\foo$", "a$b$c"]
    plot_confusion(np.eye(3), names, tmp_path / "confusion.png")
    plot_per_class([{"name": name, "iou": 0.5, "support": 1} for name in names], tmp_path / "per_class.png")
    assert (tmp_path / "confusion.png").stat().st_size > 0 and (tmp_path / "per_class.png").stat().st_size > 0
