"""resolve_labels: one LabelSpec (encoding, names, colors, ignore value) for check, train and the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from masksmith.data.check import check_dataset
from masksmith.data.encoding import MaskEncoding, ignore_index_problem
from masksmith.data.labels import ClassCountError, LabelSpec, resolve_labels
from masksmith.data.masks import read_mask
from masksmith.errors import ConfigError, DataError
from tests.helpers import make_void_dataset

NAMES = ["background", "red box", "blue box"]


def _masks(root):
    return sorted((root / "masks").glob("*.png"))


def test_void_just_above_the_classes_is_the_ignore_value(tmp_path):
    # Train and check both pass the ignore value to detection, so void = K is not taken for one more class
    # ("lists 3 classes but the masks hold values up to 3").
    root = make_void_dataset(tmp_path / "data", void=3)
    spec = resolve_labels(_masks(root), classes=root / "classes.txt", ignore_index=3)
    assert spec.class_names == tuple(NAMES) and spec.num_classes == 3 and spec.ignore_index == 3
    assert spec.encoding == MaskEncoding("index")
    assert spec.colors == ((0, 0, 0), (128, 0, 0), (0, 128, 0))  # VOC's, one per class
    unnamed = resolve_labels(_masks(root), ignore_index=3)
    assert unnamed.class_names == ("class_0", "class_1", "class_2")
    decoded = read_mask(_masks(root)[0], spec.encoding, spec.num_classes, spec.ignore_index)
    assert set(np.unique(decoded).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("void", [3, 200, 255])
def test_check_reads_void_datasets_without_errors(tmp_path, void):
    root = make_void_dataset(tmp_path / "data", void=void)
    report = check_dataset(root, ignore_index=void, progress=False, workers=1)
    assert report.errors == []
    assert report.class_names == NAMES and report.ignore_index == void
    assert report.labels == LabelSpec(MaskEncoding("index"), tuple(NAMES), report.labels.colors, void)
    assert report.ignored_pixels["overall"] > 0
    assert report.to_dict()["ignore_index"] == void


def test_an_ignore_value_naming_the_last_class_makes_it_the_void_one_inside_is_refused(tmp_path):
    root = make_void_dataset(tmp_path / "data", void=3)
    names = [*NAMES, "void"]
    spec = resolve_labels(_masks(root), classes=names, ignore_index=3)
    assert list(spec.class_names) == list(NAMES) and spec.ignore_index == 3
    report = check_dataset(root, classes=names, ignore_index=3, progress=False, workers=1)
    assert report.labels is not None and report.labels.num_classes == 3 and not report.errors
    with pytest.raises(ConfigError, match=r"ignore_index 1 is class 1 '.*', in the middle of the 4 classes") as caught:
        resolve_labels(_masks(root), classes=names, ignore_index=1)
    assert "need an ignore_index of at least" not in str(caught.value)
    with pytest.raises(ConfigError, match="class 1 '.*', in the middle"):
        check_dataset(root, classes=names, ignore_index=1, progress=False, workers=1)
    with pytest.raises(ConfigError, match="class 1 'foreground'"):
        LabelSpec(MaskEncoding("binary", 255, 0), ("background", "foreground"), ((0, 0, 0), (1, 1, 1)), 1)


def test_ignore_value_rule():
    assert ignore_index_problem(3, 3) is None and ignore_index_problem(255, 254) is None
    assert "between 0 and 255" in ignore_index_problem(256, 3)
    assert "integer" in ignore_index_problem(True, 3)
    assert "class 0" in ignore_index_problem(0, 2)


def test_names_binary_and_color_defaults(tmp_path):
    binary = tmp_path / "b.png"
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8).repeat(8, 0).repeat(8, 1)).save(binary)
    spec = resolve_labels([binary])
    assert spec.class_names == ("background", "foreground") and spec.encoding.kind == "binary"
    # Three names for 0/1-looking masks: index masks, as train and check both decided it before.
    three = resolve_labels([binary], classes=["a", "b", "c"], foreground=255)
    assert three.encoding == MaskEncoding("index") and three.num_classes == 3
    color = tmp_path / "c.png"
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (10, 200, 30)
    Image.fromarray(rgb).save(color)
    spec = resolve_labels([color])
    assert spec.colors == ((0, 0, 0), (10, 200, 30)) and spec.class_names == ("class_0", "class_1")
    with pytest.raises(ClassCountError, match=r"3 class names given but the color masks hold 2 colors"):
        resolve_labels([color], classes=["a", "b", "c"])
    with pytest.raises(DataError, match="no masks"):
        resolve_labels([])


def test_values_seen_extend_unnamed_index_classes(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8).repeat(8, 0).repeat(8, 1)).save(path)
    assert resolve_labels([path]).num_classes == 3
    assert resolve_labels([path], values_seen={0, 1, 2, 5, 255}).num_classes == 6  # 255: the ignore value


def test_spec_round_trips_through_json():
    spec = LabelSpec(MaskEncoding("color", colors=[(0, 0, 0), (9, 9, 9)], ignore_color=(255, 255, 255)),
                     ("a", "b"), ((0, 0, 0), (9, 9, 9)), 2)
    assert LabelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ConfigError, match="missing"):
        LabelSpec.from_dict({"class_names": ["a"]})
    with pytest.raises(ConfigError, match="1 colors for 2 classes"):
        LabelSpec(MaskEncoding("index"), ("a", "b"), ((0, 0, 0),), 255)


@pytest.mark.slow
def test_a_dataset_with_void_just_above_the_classes_trains_and_evaluates(tmp_path):
    """void = K (K class names, masks 0..K-1 and K): train, evaluate and check all work, void counted nowhere."""
    import masksmith

    root = make_void_dataset(tmp_path / "data", void=3)
    (root / "classes.txt").write_text("background\nred box\nblue box\n")
    run = masksmith.train(root, ignore_index=3, epochs=1, size=32, batch_size=4, auto=False, quiet=True,
                          model_options={"base_channels": 4}, num_workers=0, out=str(tmp_path / "run"))
    meta = masksmith.bundle.read_meta(run.bundle)
    assert meta.class_names == ["background", "red box", "blue box"] and meta.ignore_index == 3
    scores = masksmith.evaluate(run.bundle, root, split="all", out=tmp_path / "eval", progress=False)
    matrix = scores["confusion_matrix"]
    assert len(matrix) == 3  # the void value is no class of the confusion matrix
