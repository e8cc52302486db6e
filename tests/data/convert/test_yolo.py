"""YOLO segmentation labels → VOC masks: Ultralytics' own labels give Ultralytics' own pixels, both
layouts (Ultralytics, Roboflow) are read, later lines win, and broken or hostile files are reported."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from masksmith.cli.app import app
from masksmith.data.convert import convert_yolo
from masksmith.data.convert import yolo as yolo_module
from masksmith.data.convert.yolo import polygon_pixels
from masksmith.errors import DataError

from tests.helpers import dense_rectangle, read_png as _png, write_image as _image

FIXTURE = Path(__file__).parents[2] / "fixtures" / "convert" / "yolo-ultralytics"


def _label(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _square(cls: int, x0: float, y0: float, x1: float, y1: float) -> str:
    return f"{cls} {x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1}\n"


def _dataset(root: Path, names: str = "[cat, dog]") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names}\n")
    return root


def _convert(root: Path, **kwargs):
    return convert_yolo(root, root.parent / "out", visualize=False, progress=False, **kwargs)


def test_ultralytics_labels_give_ultralytics_pixels(tmp_path: Path) -> None:
    # Labels written by Ultralytics' convert_segment_masks_to_yolo_seg; references drawn with its
    # polygon2mask (see tests/fixtures/convert/yolo-ultralytics/make.py).
    root = tmp_path / "ds"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("reference", "make.py", "README.md"))
    report = _convert(root)
    assert report.failed == []
    assert report.written == ["a", "b", "c"]
    assert report.class_names == ["background", "cat", "dog"]  # names 0 cat, 1 dog, 2 __ignore__
    out = tmp_path / "out"
    values = set()
    for stem in report.written:
        reference = _png(FIXTURE / "reference" / f"{stem}.png")  # class id + 1, 0 = background
        expected = np.choose(reference, [0, 1, 2, 255]).astype(np.uint8)
        np.testing.assert_array_equal(_png(out / "SegmentationClass" / f"{stem}.png"), expected)
        values |= set(np.unique(expected).tolist())
    assert values == {0, 1, 2, 255}  # every class and the ignore label occur
    assert (out / "ImageSets" / "Segmentation" / "train.txt").read_text() == "a\nb\n"
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == "c\n"
    assert (out / "class_names.txt").read_text() == "background\ncat\ndog"


def _ultralytics_importable() -> bool:
    try:
        importlib.import_module("ultralytics.data.utils")
    except Exception:  # noqa: BLE001 - without torchvision its import fails in several ways
        return False
    return True


@pytest.mark.skipif(not _ultralytics_importable(), reason="ultralytics is not importable here (it needs "
                    "torchvision, which has no build beside this CPU torch); its recorded output in "
                    "tests/fixtures/convert/yolo-ultralytics is checked instead")
def test_round_trip_through_ultralytics_itself(tmp_path: Path) -> None:
    from ultralytics.data.converter import convert_segment_masks_to_yolo_seg
    from ultralytics.data.utils import polygon2mask

    rng = np.random.default_rng(7)
    root = _dataset(tmp_path / "ds", "[a, b, c]")
    masks = tmp_path / "masks"
    masks.mkdir()
    for n in range(4):
        height, width = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        mask = np.zeros((height, width), np.uint8)
        for value in rng.integers(1, 4, 5):
            y, x = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
            mask[y:y + int(rng.integers(3, 20)), x:x + int(rng.integers(3, 20))] = value
        Image.fromarray(mask).save(masks / f"m{n}.png")
        _image(root / "images" / "train" / f"m{n}.png", height, width)
    convert_segment_masks_to_yolo_seg(str(masks), str(root / "labels" / "train"), classes=3)
    report = _convert(root)
    assert report.failed == []
    for stem in report.written:
        height, width = _png(masks / f"{stem}.png").shape
        expected = np.zeros((height, width), np.uint8)
        for line in (root / "labels" / "train" / f"{stem}.txt").read_text().splitlines():
            values = line.split()
            points = np.array(values[1:], np.float32).reshape(-1, 2) * np.array([width, height], np.float32)
            expected[polygon2mask((height, width), [points.reshape(-1)]) == 1] = int(values[0]) + 1
        np.testing.assert_array_equal(_png(tmp_path / "out" / "SegmentationClass" / f"{stem}.png"), expected)


def test_later_lines_are_drawn_over_earlier_ones(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    _image(root / "images" / "a.png", 40, 40)
    _label(root / "labels" / "a.txt", _square(0, 0.1, 0.1, 0.6, 0.6) + _square(1, 0.4, 0.4, 0.9, 0.9))
    report = _convert(root)
    assert report.failed == [] and report.written == ["a"]
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    objects = _png(tmp_path / "out" / "SegmentationObject" / "a.png")
    assert classes[20, 20] == 2 and objects[20, 20] == 2  # the overlap: the second line's class and instance
    assert classes[8, 8] == 1 and objects[8, 8] == 1
    assert classes[30, 30] == 2 and classes[38, 38] == 0
    assert not (tmp_path / "out" / "ImageSets").exists()  # no split folders, no split lists


def test_roboflow_layout_with_a_names_list_and_valid_split(tmp_path: Path) -> None:
    root = tmp_path / "rf"
    root.mkdir()
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['hole', 'crack']\n"
                                    "roboflow:\n  license: CC BY 4.0\n")
    (root / "README.roboflow.txt").write_text("exported from roboflow")
    for split, stem in (("train", "t1"), ("valid", "v1")):
        _image(root / split / "images" / f"{stem}.jpg")
        _label(root / split / "labels" / f"{stem}.txt", _square(1, 0.2, 0.2, 0.5, 0.5))
    report = _convert(root)
    assert report.failed == [] and sorted(report.written) == ["t1", "v1"]
    assert report.class_names == ["background", "hole", "crack"]
    assert (tmp_path / "out" / "ImageSets" / "Segmentation" / "val.txt").read_text() == "v1\n"
    assert set(np.unique(_png(tmp_path / "out" / "SegmentationClass" / "t1.png"))) == {0, 2}


def test_points_are_scaled_in_float32_as_ultralytics_scales_them() -> None:
    # 0.58 * 50 is 28.999999999999996 in float64 but 29.0 in float32; Ultralytics truncates the float32
    # product, so the polygon starts at column 29, where float64 arithmetic would start it at 28.
    assert int(np.float64(0.58) * 50) == 28 and int(np.float32(0.58) * np.float32(50)) == 29
    pixels = polygon_pixels(np.array([[0.58, 0.1], [0.9, 0.1], [0.9, 0.9], [0.58, 0.9]], np.float32), 20, 50)
    assert np.flatnonzero(pixels[10]).min() == 29


def test_background_and_ignore_names(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", "{0: __ignore__, 1: background, 2: cat}")
    _image(root / "images" / "a.png", 40, 40)
    _label(root / "labels" / "a.txt", _square(2, 0.1, 0.1, 0.9, 0.9) + _square(0, 0.1, 0.1, 0.3, 0.3)
           + _square(1, 0.7, 0.7, 0.9, 0.9))
    report = _convert(root)
    assert report.class_names == ["background", "cat"]
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    objects = _png(tmp_path / "out" / "SegmentationObject" / "a.png")
    assert classes[20, 20] == 1 and classes[6, 6] == 255 and objects[6, 6] == 255
    assert classes[33, 33] == 0 and objects[33, 33] == 0  # a background region erases


def test_image_without_a_label_file_is_background(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    _image(root / "images" / "a.png")
    _label(root / "labels" / "a.txt", _square(0, 0.1, 0.1, 0.5, 0.5))
    _image(root / "images" / "empty.png")
    report = _convert(root)
    assert report.failed == [] and sorted(report.written) == ["a", "empty"]
    assert not _png(tmp_path / "out" / "SegmentationClass" / "empty.png").any()


def test_million_point_polygon_equals_its_corners(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    _image(root / "images" / "big.png", 60, 80)
    _image(root / "images" / "corners.png", 60, 80)
    x0, y0, x1, y1 = 0.1, 0.2, 0.8, 0.7
    points = dense_rectangle(x0, y0, x1, y1)
    assert len(points) == 1_000_000
    _label(root / "labels" / "big.txt", "0 " + " ".join(f"{v:.6f}" for v in points.ravel()) + "\n")
    _label(root / "labels" / "corners.txt", _square(0, x0, y0, x1, y1))
    report = _convert(root)
    assert report.failed == []
    big = _png(tmp_path / "out" / "SegmentationClass" / "big.png")
    assert big.any()
    np.testing.assert_array_equal(big, _png(tmp_path / "out" / "SegmentationClass" / "corners.png"))


def test_folder_run_goes_on_and_lists_every_bad_label_file(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    cases = {
        "binary": (b"\xff\xfe\x00garbage", "not a text (UTF-8) file"),
        "odd": ("0 0.1 0.1 0.5 0.5 0.2\n", "an odd number of coordinates"),
        "box": ("0 0.5 0.5 0.2 0.2\n", "5 values are a detection box"),
        "too_few": (_square(0, 0.1, 0.1, 0.5, 0.5) + "1 0.1 0.1\n", "line 2: a polygon of 1 point(s)"),
        "pixels": (_square(0, 3, 4, 30, 40), "coordinate 40 is outside 0..1"),
        "negative": (_square(0, -0.5, 0.1, 0.5, 0.5), "coordinate -0.5 is outside 0..1"),
        "nan": ("0 0.1 nan 0.5 0.1 0.5 0.5\n", "not a finite number"),
        "inf": ("0 0.1 0.1 inf 0.1 0.5 0.5\n", "not a finite number"),
        "unknown_class": (_square(7, 0.1, 0.1, 0.5, 0.5), "class id 7 is not in the dataset's names (ids 0..1)"),
        "fractional_class": (_square(0, 0.1, 0.1, 0.5, 0.5).replace("0 ", "0.5 ", 1), "class id 0.5 is not"),
        "negative_class": (_square(0, 0.1, 0.1, 0.5, 0.5).replace("0 ", "-1 ", 1), "class id -1 is not"),
        "word": ("0 0.1 0.1 zero 0.1 0.5 0.5\n", "'zero' is not a number"),
    }
    for stem, (text, _) in cases.items():
        _image(root / "images" / "train" / f"{stem}.png")
        path = root / "labels" / "train" / f"{stem}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _image(root / "images" / "train" / "good.png")
    _label(root / "labels" / "train" / "good.txt", _square(1, 0.1, 0.1, 1.005, 0.5))  # 1% over: allowed
    _label(root / "labels" / "train" / "orphan.txt", _square(0, 0.1, 0.1, 0.5, 0.5))  # its image is missing
    (root / "images" / "train" / "broken.png").write_bytes(b"not a png")
    _label(root / "labels" / "train" / "broken.txt", _square(0, 0.1, 0.1, 0.5, 0.5))
    report = _convert(root)
    assert report.written == ["good"]
    reasons = {Path(path).stem: reason for path, reason in report.failed}
    assert set(reasons) == set(cases) | {"orphan", "broken"}
    for stem, (_, fragment) in cases.items():
        assert fragment in reasons[stem], (stem, reasons[stem])
        assert f"{stem}.txt" in reasons[stem]
    assert "no image for this label file" in reasons["orphan"]
    assert "broken" in reasons["broken"]
    assert all("\n" not in reason for reason in reasons.values())
    # The good image's polygon reaches past the right edge by 0.5%: clipped, no error.
    assert _png(tmp_path / "out" / "SegmentationClass" / "good.png")[10, -1] == 2


def test_label_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    _image(root / "images" / "huge.png")
    (root / "labels").mkdir()
    with open(root / "labels" / "huge.txt", "wb") as f:
        f.truncate(100 * 2**20)  # 100 MB (sparse): refused by its size before a byte is read
    _image(root / "images" / "fine.png")
    _label(root / "labels" / "fine.txt", _square(0, 0.1, 0.1, 0.5, 0.5))
    report = _convert(root)
    assert report.written == ["fine"]
    [(path, reason)] = report.failed
    assert path.name == "huge.txt"
    assert f"label file is 100.0 MiB, over the limit of {yolo_module.MAX_LABEL_FILE_BYTES // 2**20} MiB" in reason


@pytest.mark.parametrize(("yaml_text", "fragment"), [
    ("names: [a, b\n", "invalid YAML"),
    ("- just\n- a list\n", "top level is a list"),
    ("nc: 2\n", "'names' must be a list"),
    ("names: []\n", "'names' is empty"),
    ("nc: 3\nnames: [a, b]\n", "nc is 3 but 'names' lists 2 classes"),
    ("names: {a: cat}\n", "class id 'a' in 'names' is not a non-negative integer"),
    ("names: [cat, cat]\n", "label names repeat"),
    ("names: [\"cat\\nrat\"]\n", "holds a line break"),
    ("names: [[nested]]\n", "has a name that is not text"),
    # A YAML "billion laughs": aliases nest 9 levels of 9, yet safe_load shares them, and the list is refused.
    ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
                                              for p, c in zip("abcdefgh", "bcdefghi")) + "names: *i\n",
     "has a name that is not text"),
])
@pytest.mark.slow
def test_bad_dataset_yaml_is_an_error_naming_it(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "data.yaml").write_text(yaml_text)
    _image(root / "images" / "a.png")
    _label(root / "labels" / "a.txt", _square(0, 0.1, 0.1, 0.5, 0.5))
    with pytest.raises(DataError, match=fragment) as info:
        _convert(root)
    assert "data.yaml" in str(info.value)


def test_missing_yaml_images_or_labels_are_errors(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    with pytest.raises(DataError, match="no data.yaml"):
        _convert(root)
    _dataset(root)
    with pytest.raises(DataError, match="no images in an images/ folder"):
        _convert(root)
    _image(root / "images" / "a.png")
    with pytest.raises(DataError, match="no label files beside the images"):
        _convert(root)
    with pytest.raises(DataError, match="not a folder"):
        convert_yolo(tmp_path / "nope", tmp_path / "out")


def test_cli_lists_bad_files_and_exits_1(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    _image(root / "images" / "a.png")
    _label(root / "labels" / "a.txt", _square(0, 0.1, 0.1, 0.5, 0.5))
    _image(root / "images" / "b.png")
    _label(root / "labels" / "b.txt", _square(9, 0.1, 0.1, 0.5, 0.5))
    result = CliRunner().invoke(app, ["convert", "yolo", str(root), str(tmp_path / "out"), "-q", "--no-viz"])
    assert result.exit_code == 1
    assert "wrote 1 masks, 3 classes" in result.output
    assert "1 file(s) could not be converted" in result.output and "b.txt: line 1: class id 9" in result.output
    result = CliRunner().invoke(app, ["convert", "yolo", str(tmp_path / "nope"), str(tmp_path / "out2")])
    assert result.exit_code == 2 and "not a folder" in result.output
    assert os.path.isfile(tmp_path / "out" / "class_names.txt")
