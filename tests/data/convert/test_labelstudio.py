"""Label Studio JSON → VOC masks: a real export gives the pixels of Label Studio's own COCO export,
brushes decode to the masks Label Studio's encoder was given, and broken or hostile input is reported."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from masksmith.cli.app import app
from masksmith.data.convert import convert_coco, convert_labelstudio
from masksmith.data.convert import labelstudio as labelstudio_module
from masksmith.data.convert.labelstudio_rle import decode_brush, decode_rle
from masksmith.errors import DataError

from tests.helpers import dense_rectangle, read_png as _png, write_image as _image

FIXTURE = Path(__file__).parents[2] / "fixtures" / "convert" / "labelstudio"


def _polygon(label: str, points: list[list[float]], height: int = 40, width: int = 50, **extra: Any) -> dict:
    return {"id": extra.pop("id", label), "type": "polygonlabels", "from_name": "label", "to_name": "image",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"points": points, "polygonlabels": [label]}, **extra}


def _square(label: str, x0: float, y0: float, x1: float, y1: float, **extra: Any) -> dict:
    return _polygon(label, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], **extra)


def _task(task_id: int, image: str, results: list[dict], **extra: Any) -> dict:
    return {"id": task_id, "data": {"image": image},
            "annotations": [{"id": 10 * task_id, "result": results, "was_cancelled": False}], **extra}


def _write(path: Path, tasks: Any) -> Path:
    path.write_text(json.dumps(tasks))
    return path


def _convert(tmp_path: Path, tasks: Any, **kwargs):
    export = _write(tmp_path / "export.json", tasks)
    return convert_labelstudio(export, tmp_path / "images", tmp_path / "out", visualize=False, progress=False, **kwargs)


def test_real_export_gives_the_pixels_of_label_studios_coco_export(tmp_path: Path) -> None:
    # data_polygons.json is a real Label Studio export; sdk-coco.json is Label Studio's own COCO export
    # of it (label-studio-sdk's converter). Its image is found through file_upload, upload prefix removed.
    _image(tmp_path / "images" / "000000000025.jpg", 426, 640)
    labels = tmp_path / "labels.txt"
    labels.write_text("Airplane\nCar\n")
    report = convert_labelstudio(FIXTURE / "data_polygons.json", tmp_path / "images", tmp_path / "out", labels,
                                 visualize=False, progress=False)
    assert report.failed == [] and report.written == ["000000000025"]
    assert report.class_names == ["background", "Airplane", "Car"]

    coco = json.loads((FIXTURE / "sdk-coco.json").read_text())
    coco["images"][0]["file_name"] = "000000000025.jpg"  # Label Studio names it after its own copy
    coco_path = _write(tmp_path / "coco.json", coco)
    reference = convert_coco(coco_path, tmp_path / "images", tmp_path / "coco_out", visualize=False, progress=False)
    assert reference.class_names == report.class_names
    ours = _png(tmp_path / "out" / "SegmentationClass" / "000000000025.png")
    assert (ours == 1).sum() > 10_000
    np.testing.assert_array_equal(ours, _png(tmp_path / "coco_out" / "SegmentationClass" / "000000000025.png"))


def test_brushes_decode_to_the_masks_label_studio_encoded(tmp_path: Path) -> None:
    # brush-export.json: Label Studio's encoder (label-studio-sdk image2annotation) given brush-masks/*.png.
    for mask in sorted((FIXTURE / "brush-masks").glob("*.png")):
        height, width = _png(mask).shape
        _image(tmp_path / "images" / mask.name, height, width)
    report = convert_labelstudio(FIXTURE / "brush-export.json", tmp_path / "images", tmp_path / "out",
                                 visualize=False, progress=False)
    assert report.failed == [] and report.written == ["brush_a", "brush_b"]
    assert report.class_names == ["background", "Airplane", "Car"]
    for stem, cls in (("brush_a", 1), ("brush_b", 2)):
        expected = np.where(_png(FIXTURE / "brush-masks" / f"{stem}.png") > 0, cls, 0)
        np.testing.assert_array_equal(_png(tmp_path / "out" / "SegmentationClass" / f"{stem}.png"), expected)


def _brush_module():
    for name in ("label_studio_sdk.converter.brush", "label_studio_converter.brush"):
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001 - either package may be absent or broken
            continue
    return None


BRUSH = _brush_module()


@pytest.mark.skipif(BRUSH is None, reason="neither label-studio-sdk nor label-studio-converter is installed (the "
                    "SDK pins numpy and OpenCV versions this environment does not have); brush-export.json "
                    "holds its recorded output instead")
def test_decoder_agrees_with_label_studios_own_codec() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(1, 50, 2))
        mask = ((rng.random((height, width)) > rng.random()) * 255).astype(np.uint8)
        rle = BRUSH.mask2rle(mask)
        np.testing.assert_array_equal(decode_brush(rle, height, width), mask > 0)
        np.testing.assert_array_equal(decode_rle(rle), BRUSH.decode_rle(rle))
    values = rng.integers(0, 256, 5000).astype(np.uint8)  # literal groups, every byte value
    np.testing.assert_array_equal(decode_rle(BRUSH.encode_rle(values)), values)


def test_regions_are_drawn_in_order_with_background_and_ignore(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    tasks = [_task(1, "/data/upload/1/0a1b2c3d-a.png", [
        _square("cat", 10, 10, 60, 60, id="r1"),
        _square("dog", 40, 40, 90, 90, id="r2"),
        _square("__ignore__", 0, 0, 10, 10, id="r3"),
        _square("background", 80, 80, 100, 100, id="r4"),
        {"id": "c", "type": "choices", "value": {"choices": ["outdoor"]}},  # not an area: skipped
        {"id": "k", "type": "keypointlabels", "value": {"x": 5, "y": 5, "keypointlabels": ["cat"]}},
    ])]
    report = _convert(tmp_path, tasks)
    assert report.failed == [] and report.class_names == ["background", "cat", "dog"]  # used labels, sorted
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    objects = _png(tmp_path / "out" / "SegmentationObject" / "a.png")
    assert classes[20, 25] == 2 and objects[20, 25] == 2  # overlap: the later region
    assert classes[6, 7] == 1 and objects[6, 7] == 1
    assert classes[2, 2] == 255 and objects[2, 2] == 255
    assert classes[38, 48] == 0 and objects[38, 48] == 0  # the background region erased the dog there


def test_labels_file_sets_the_class_order_and_refuses_unknown_labels(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("zebra\n\ncat\n")
    tasks = [_task(1, "a.png", [_square("cat", 10, 10, 60, 60)]), _task(2, "b.png", [_square("dog", 10, 10, 60, 60)])]
    report = _convert(tmp_path, tasks, labels=labels)
    assert report.class_names == ["background", "zebra", "cat"]
    assert report.written == ["a"]
    [(_, reason)] = report.failed
    assert "task 2" in reason and "label 'dog' is not in" in reason and str(labels) in reason


def test_annotation_choice_cancelled_ground_truth_last(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.png")
    cat, dog = [_square("cat", 10, 10, 60, 60)], [_square("dog", 10, 10, 60, 60)]
    tasks = [
        {"id": 1, "data": {"image": "a.png"}, "annotations": [
            {"id": 1, "result": dog, "ground_truth": True}, {"id": 2, "result": cat},
            {"id": 3, "result": cat, "was_cancelled": True}]},
        {"id": 2, "data": {"image": "b.png"}, "annotations": [
            {"id": 4, "result": cat}, {"id": 5, "result": dog}, {"id": 6, "result": cat, "was_cancelled": True}],
         "predictions": [{"result": cat}]},
    ]
    report = _convert(tmp_path, tasks)
    # Only the converted annotations' labels are classes: cat appears only where it is not taken.
    assert report.failed == [] and report.class_names == ["background", "dog"]
    assert _png(tmp_path / "out" / "SegmentationClass" / "a.png")[20, 20] == 1  # ground truth
    assert _png(tmp_path / "out" / "SegmentationClass" / "b.png")[20, 20] == 1  # the last not cancelled


def test_unlabelled_kinds_take_the_label_of_their_region(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    region = _square("cat", 10, 10, 60, 60, id="p1")
    region.update(type="polygon", value={"points": region["value"]["points"]})
    tasks = [_task(1, "a.png", [region, {"id": "p1", "type": "labels", "value": {"labels": ["cat"]}}])]
    report = _convert(tmp_path, tasks)
    assert report.failed == [] and _png(tmp_path / "out" / "SegmentationClass" / "a.png")[20, 20] == 1


def test_image_lookup_follows_label_studio_urls_and_stays_inside_images(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "sub" / "local.png")
    _image(tmp_path / "images" / "my photo.png")
    _image(tmp_path / "images" / "plain.png")
    _image(tmp_path / "secret.png")  # outside IMAGES: never read
    region = [_square("cat", 10, 10, 60, 60)]
    tasks = [
        _task(1, "/data/local-files/?d=sub/local.png", region),
        _task(2, "https://bucket.example/x/3f2a9c1b-my%20photo.png?token=1", region),
        _task(3, "s3://bucket/deep/path/plain.png", region),
        _task(4, "/data/local-files/?d=../secret.png", region),
        {"id": 5, "data": {"img": "plain2.png", "caption": "two texts"}, "annotations": [{"result": region}]},
    ]
    report = _convert(tmp_path, tasks)
    assert report.written == ["local", "my photo", "plain"]
    reasons = [reason for _, reason in report.failed]
    assert len(reasons) == 2
    assert "task 4" in reasons[0] and "image not found" in reasons[0]
    assert "task 5" in reasons[1] and "cannot tell which is the image" in reasons[1]


@pytest.mark.slow
def test_million_point_polygon_equals_its_corners(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "big.png", 60, 80)
    _image(tmp_path / "images" / "corners.png", 60, 80)
    x0, y0, x1, y1 = 10.0, 20.0, 80.0, 70.0
    points = dense_rectangle(x0, y0, x1, y1)
    assert len(points) == 1_000_000
    tasks = [_task(1, "big.png", [_polygon("cat", points.tolist(), 60, 80)]),
             _task(2, "corners.png", [_square("cat", x0, y0, x1, y1, original_width=80, original_height=60)])]
    report = _convert(tmp_path, tasks)
    assert report.failed == []
    big = _png(tmp_path / "out" / "SegmentationClass" / "big.png")
    assert big.sum() > 1000
    np.testing.assert_array_equal(big, _png(tmp_path / "out" / "SegmentationClass" / "corners.png"))


def _brush_region(rle: Any, height: int = 40, width: int = 50, label: str = "cat") -> dict:
    return {"id": "b", "type": "brushlabels", "original_width": width, "original_height": height,
            "value": {"format": "rle", "rle": rle, "brushlabels": [label]}}


def _rle_header(count: int) -> list[int]:
    """The first bytes of a brush RLE declaring `count` values of 8 bits and nothing after."""
    bits = f"{count:032b}" + f"{7:05b}" + "0011" * 4
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def test_folder_run_goes_on_and_lists_every_bad_task(tmp_path: Path) -> None:
    cases = {
        "few_points": ([_polygon("cat", [[1, 1], [50, 50]])], "a polygon of 2 point(s); it needs at least 3"),
        "nan": ([_polygon("cat", [[1, 1], [float("nan"), 50], [50, 1]])], "is not two finite numbers"),
        "not_pair": ([_polygon("cat", [[1, 1, 1], [2, 50], [50, 1]])], "is not two finite numbers"),
        "no_label": ([{**_square("cat", 1, 1, 5, 5), "value": {"points": [[1, 1], [5, 5], [1, 5]],
                                                              "polygonlabels": []}}], "has no label"),
        "two_labels": ([{**_square("cat", 1, 1, 5, 5), "value": {"points": [[1, 1], [5, 5], [1, 5]],
                                                                "polygonlabels": ["cat", "dog"]}}], "has 2 labels"),
        "size": ([_square("cat", 1, 1, 5, 5, original_width=640)],
                 "made on a 640x40 image but the image file is 50x40"),
        "rotated": ([_square("cat", 1, 1, 5, 5, image_rotation=90)], "rotated by 90 degrees"),
        "rle_garbage": ([_brush_region([300, -1, 2])], "broken brush RLE: the RLE must be a list of byte values"),
        "rle_short": ([_brush_region(_rle_header(40 * 50 * 4))], "broken brush RLE: the RLE data ends early"),
        "rle_wrong_size": ([_brush_region(_rle_header(7))], "holds 7 values but the image needs 8000"),
        "rle_huge": ([_brush_region(_rle_header(2**32 - 1))], "holds 4294967295 values"),
        "rle_missing": ([{**_brush_region([]), "value": {"format": "png", "brushlabels": ["cat"]}}],
                        "has no 'rle' list"),
        "missing_image": ([_square("cat", 1, 1, 5, 5)], "image not found"),
    }
    tasks = []
    for number, (stem, (results, _)) in enumerate(cases.items(), start=1):
        if stem != "missing_image":
            _image(tmp_path / "images" / f"{stem}.png")
        tasks.append(_task(number, f"{stem}.png", results))
    _image(tmp_path / "images" / "good.png")
    tasks.append(_task(100, "good.png", [_square("cat", -20, -20, 120, 50)]))  # outside the image: clipped
    tasks.append("not a task")
    tasks.append({"id": 102, "data": {"image": "good.png"}})
    report = _convert(tmp_path, tasks)
    assert report.written == ["good"]
    reasons = [reason for _, reason in report.failed]
    assert len(reasons) == len(cases) + 2
    for number, (stem, (_, fragment)) in enumerate(cases.items(), start=1):
        assert f"task {number}" in reasons[number - 1] and fragment in reasons[number - 1], reasons[number - 1]
    assert "task #" in reasons[-2] and "not an object" in reasons[-2]
    assert "task 102" in reasons[-1] and "no 'annotations' list" in reasons[-1]
    good = _png(tmp_path / "out" / "SegmentationClass" / "good.png")
    assert good[:20].all() and not good[20:].any()


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", "Label Studio export is empty"),
    (b"[{\"id\": 1,", "invalid JSON"),
    (b"\xff\xfe[]", "not a text (UTF-8) file"),
    (b"{\"tasks\": []}", "top level is a dict, not a list of tasks"),
    (b"[" * 100_000 + b"]" * 100_000, "nested more than"),
])
def test_broken_export_is_an_error_naming_it(tmp_path: Path, content: bytes, fragment: str) -> None:
    (tmp_path / "images").mkdir()
    export = tmp_path / "export.json"
    export.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(fragment)) as info:
        convert_labelstudio(export, tmp_path / "images", tmp_path / "out", progress=False)
    assert "export.json" in str(info.value)
    with pytest.raises(DataError, match="images folder not found"):
        convert_labelstudio(FIXTURE / "data_polygons.json", tmp_path / "nope", tmp_path / "out", progress=False)


def test_export_over_the_limit_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "images").mkdir()
    export = tmp_path / "export.json"
    with open(export, "wb") as f:
        f.truncate(100 * 2**20)  # 100 MB (sparse); the limit lowered to 64 MiB to stand for a far larger file
    monkeypatch.setattr(labelstudio_module, "MAX_EXPORT_BYTES", 64 * 2**20)
    with pytest.raises(DataError, match="Label Studio export is 100.0 MiB, over the limit of 64 MiB"):
        convert_labelstudio(export, tmp_path / "images", tmp_path / "out", progress=False)


def test_a_100_mb_export_converts(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    task = _task(1, "a.png", [_square("cat", 10, 10, 60, 60)], meta={"notes": "x" * (100 * 2**20)})
    report = _convert(tmp_path, [task])
    assert (tmp_path / "export.json").stat().st_size > 100 * 2**20
    assert report.failed == [] and _png(tmp_path / "out" / "SegmentationClass" / "a.png")[20, 20] == 1


def test_cli_lists_bad_tasks_and_exits_1(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    export = _write(tmp_path / "export.json", [_task(1, "a.png", [_square("cat", 1, 1, 50, 50)]),
                                               _task(2, "gone.png", [_square("cat", 1, 1, 50, 50)])])
    result = CliRunner().invoke(app, ["convert", "labelstudio", str(export), str(tmp_path / "images"),
                                      str(tmp_path / "out"), "-q", "--no-viz"])
    assert result.exit_code == 1
    assert "wrote 1 masks, 2 classes" in result.output and "task 2: image not found" in result.output
    shutil.rmtree(tmp_path / "out")
    result = CliRunner().invoke(app, ["convert", "labelstudio", str(tmp_path / "nope.json"),
                                      str(tmp_path / "images"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "Label Studio export not found" in result.output
