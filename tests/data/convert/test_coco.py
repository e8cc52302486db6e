"""COCO → VOC masks: Labelme's COCO export gives back its VOC masks (up to pycocotools' boundary
pixels), crowds become ignore, RLE in both forms decodes exactly, and broken input is reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from masksmith.data.convert import convert_coco
from masksmith.data.convert.coco import coco_classes, rle_counts
from masksmith.data.convert.common import ConvertReport
from masksmith.errors import DataError
from tests.conftest import SHARED_DATA

EXAMPLE = SHARED_DATA / "labelme-examples" / "instance_segmentation"


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def _near_outlines(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """Pixels within one pixel (8-neighbourhood) of any polygon edge of `annotations`."""
    canvas = Image.new("L", (width, height))
    draw = ImageDraw.Draw(canvas)
    for annotation in annotations:
        for polygon in annotation["segmentation"]:
            points = list(zip(polygon[::2], polygon[1::2]))
            draw.line(points + points[:1], fill=1, width=1)
    edge = np.pad(np.asarray(canvas, dtype=bool), 1)
    near = np.zeros((height, width), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= edge[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
    return near


def test_labelme_coco_export_gives_back_its_voc_masks(tmp_path: Path) -> None:
    if not EXAMPLE.is_dir():
        pytest.skip(f"real data not present: {EXAMPLE}")
    ann_path = EXAMPLE / "data_dataset_coco" / "annotations.json"
    # file_name is "JPEGImages/<stem>.jpg", relative to the COCO folder.
    report = convert_coco(ann_path, EXAMPLE / "data_dataset_coco", tmp_path, progress=False)
    assert report.failed == []
    assert report.written == ["2011_000003", "2011_000025", "2011_000006"]  # the order of 'images'
    expected_voc = EXAMPLE / "data_dataset_voc"
    assert (tmp_path / "class_names.txt").read_bytes() == (expected_voc / "class_names.txt").read_bytes()

    # Exact equality is impossible: Labelme filled the polygons with PIL, which includes the pixels
    # on a polygon's right and bottom edges (a box from x=2 to x=6 covers 5 columns), while
    # pycocotools, COCO's reference rasterizer, is half-open (4 columns); PIL also closes sub-pixel
    # gaps between two polygons that touch, where pycocotools leaves a 1-pixel seam. Measured
    # agreement: 99.61% (2011_000003), 99.66% (2011_000025), 99.41% (2011_000006), 99.56% overall,
    # and not one differing pixel further than one pixel from a polygon edge.
    # Labelme's __ignore__ polygon (255 in its VOC masks) is not in its COCO export, so those pixels
    # are left out of the comparison.
    data = json.loads(ann_path.read_text())
    agree = total = 0
    for entry in data["images"]:
        stem = Path(entry["file_name"]).stem
        expected = _png(expected_voc / "SegmentationClass" / f"{stem}.png")
        ours = _png(tmp_path / "SegmentationClass" / f"{stem}.png")
        valid = expected != 255
        same = (ours == expected) & valid
        assert same.sum() / valid.sum() >= 0.994, stem
        agree, total = agree + same.sum(), total + valid.sum()
        annotations = [a for a in data["annotations"] if a["image_id"] == entry["id"]]
        near = _near_outlines(annotations, entry["height"], entry["width"])
        assert not (valid & ~same & ~near).any(), f"{stem}: pixels differ away from polygon edges"

        # Instances: one to one with Labelme's ids. Labelme numbered its __ignore__ shape too
        # (id 6 in 2011_000006), which its COCO export drops, so our 6 is its 7 there.
        expected_objects = _png(expected_voc / "SegmentationObject" / f"{stem}.png")
        objects = _png(tmp_path / "SegmentationObject" / f"{stem}.png")
        mapping = {}
        for ours_id in np.unique(objects[valid]).tolist():
            values, counts = np.unique(expected_objects[valid & (objects == ours_id)], return_counts=True)
            mapping[ours_id] = int(values[counts.argmax()])
        shift = {6: 7} if stem == "2011_000006" else {}
        assert mapping == {i: shift.get(i, i) for i in mapping}
        lut = np.arange(256)
        lut[list(mapping)] = list(mapping.values())
        same_objects = (lut[objects] == expected_objects) & valid
        assert same_objects.sum() / valid.sum() >= 0.993, stem
        assert not (valid & ~same_objects & ~near).any(), stem
    assert agree / total >= 0.995
    # The photos are copied, not re-encoded.
    assert (tmp_path / "JPEGImages" / "2011_000006.jpg").read_bytes() == \
        (EXAMPLE / "data_dataset_coco" / "JPEGImages" / "2011_000006.jpg").read_bytes()
    assert (tmp_path / "SegmentationObjectVisualization" / "2011_000006.jpg").is_file()


# --------------------------------------------------------------------------- synthetic files


def _square(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _dataset(root: Path, annotations: list[dict], *, categories=None, images=None, size=(30, 40)) -> Path:
    """An annotations.json plus images/<name>.png (one 30x40 gray image 'a.png' unless told)."""
    height, width = size
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "height": height, "width": width}]
    for entry in images:
        path = root / "images" / entry["file_name"]
        if not path.exists() and not entry.get("_missing"):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(path)
    categories = categories if categories is not None else [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    for number, annotation in enumerate(annotations):
        annotation.setdefault("id", number + 1)
        annotation.setdefault("image_id", 1)
        annotation.setdefault("iscrowd", 0)
    data = {"images": [{k: v for k, v in e.items() if k != "_missing"} for e in images],
            "annotations": annotations, "categories": categories}
    (root / "annotations.json").write_text(json.dumps(data))
    return root / "annotations.json"


def _run(root: Path, **kwargs) -> ConvertReport:
    return convert_coco(root / "annotations.json", root / "images", root / "out", visualize=False,
                        progress=False, **kwargs)


def test_classes_in_category_id_order_with_background_first(tmp_path: Path) -> None:
    assert coco_classes([{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]) == (
        ["background", "cat", "dog"], {3: 1, 7: 2})
    names, index = coco_classes([{"id": 5, "name": "car"}, {"id": 0, "name": "_background_"}])
    assert names == ["_background_", "car"] and index == {0: 0, 5: 1}
    _dataset(tmp_path, [{"category_id": 7, "segmentation": _square(2, 2, 10, 10)}])
    report = _run(tmp_path)
    assert report.class_names == ["background", "cat", "dog"]
    assert (tmp_path / "out" / "class_names.txt").read_text() == "background\ncat\ndog"
    mask = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    assert set(np.unique(mask)) == {0, 2}
    # pycocotools' half-open rule: x 2..10 covers columns 2..9.
    rows, cols = np.nonzero(mask == 2)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 9, 2, 9)


def test_category_name_that_is_not_one_line_is_refused() -> None:
    # class_names.txt holds a name a line: "cat\nrat" would come back as two classes.
    for name, problem in (("cat\nrat", "line break"), (" cat", "spaces at its start"), ("", "is empty"),
                          ("tab\there", "line break")):
        with pytest.raises(DataError, match=problem):
            coco_classes([{"id": 1, "name": name}])


def test_crowd_is_ignore_unless_an_object_covers_it(tmp_path: Path) -> None:
    _dataset(tmp_path, [
        {"category_id": 3, "segmentation": _square(5, 5, 15, 15)},
        {"category_id": 3, "segmentation": _square(0, 0, 20, 20), "iscrowd": 1},  # after, yet under
        {"category_id": 7, "segmentation": _square(30, 0, 35, 5)},
    ])
    report = _run(tmp_path)
    assert report.failed == []
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    objects = _png(tmp_path / "out" / "SegmentationObject" / "a.png")
    assert classes[10, 10] == 1 and objects[10, 10] == 1
    assert classes[2, 2] == 255 and objects[2, 2] == 255
    assert classes[25, 25] == 0 and objects[25, 25] == 0
    assert classes[2, 32] == 2 and objects[2, 32] == 2  # crowds take no instance id
    assert (classes == 255).sum() == 20 * 20 - 10 * 10


def test_later_annotations_are_drawn_over_earlier_ones(tmp_path: Path) -> None:
    # File order, not area: the small one first is covered by the big one after it.
    _dataset(tmp_path, [{"category_id": 3, "segmentation": _square(5, 5, 10, 10)},
                        {"category_id": 7, "segmentation": _square(0, 0, 20, 20)}])
    _run(tmp_path)
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    assert (classes == 1).sum() == 0 and (classes == 2).sum() == 400
    assert (_png(tmp_path / "out" / "SegmentationObject" / "a.png") == 2).sum() == 400


def test_uncompressed_and_compressed_rle_decode_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blob = rng.random((30, 40)) < 0.3
    ring = np.zeros((30, 40), dtype=bool)
    ring[5:25, 20:38] = True
    ring[10:20, 25:33] = False
    compressed = mask_utils.encode(np.asfortranarray(ring.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode("ascii")
    # Uncompressed RLE: run lengths in column-major order, starting with a run of zeros.
    flat = blob.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    counts = np.diff(np.r_[0, changes]).tolist()
    assert sum(counts) == 30 * 40
    _dataset(tmp_path, [{"category_id": 3, "segmentation": {"size": [30, 40], "counts": counts}, "iscrowd": 1},
                        {"category_id": 7, "segmentation": compressed}])
    report = _run(tmp_path)
    assert report.failed == []
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    expected = np.zeros((30, 40), dtype=np.uint8)
    expected[blob] = 255
    expected[ring] = 2
    assert np.array_equal(classes, expected)


def test_rle_counts_decodes_pycocotools_strings() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        bitmap = (rng.random((17, 23)) < rng.random()).astype(np.uint8)
        encoded = mask_utils.encode(np.asfortranarray(bitmap))
        runs = rle_counts(encoded["counts"])
        assert sum(runs) == 17 * 23
        decoded = np.repeat(np.arange(len(runs)) % 2, runs).reshape(23, 17).T
        assert np.array_equal(decoded, bitmap)


def test_file_name_with_folders_and_basename_fallback(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "train/a.png", "height": 30, "width": 40},
              {"id": 2, "file_name": "elsewhere/b.png", "height": 30, "width": 40, "_missing": True}]
    _dataset(tmp_path, [{"category_id": 3, "segmentation": _square(1, 1, 5, 5), "image_id": 2}], images=images)
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.png")
    report = _run(tmp_path)
    assert report.failed == [] and report.written == ["a", "b"]
    assert _png(tmp_path / "out" / "SegmentationClass" / "b.png")[2, 2] == 1
    # A PNG photo is re-encoded as the layout's JPEG.
    assert Image.open(tmp_path / "out" / "JPEGImages" / "a.jpg").format == "JPEG"


def test_huge_polygon_coordinates_are_clipped(tmp_path: Path) -> None:
    _dataset(tmp_path, [{"category_id": 3, "segmentation": [[-1e15, -1e15, 1e15, -1e15, 1e15, 12, -1e15, 12]]}])
    report = _run(tmp_path)
    assert report.failed == []
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    assert (classes[:12] == 1).all() and not classes[12:].any()


# --------------------------------------------------------------------------- hostile input


def test_broken_annotations_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    ann = tmp_path / "annotations.json"
    for text, fragment in [("", "annotations file is empty"), ("{not json", "invalid JSON"),
                           ("[]", "not a COCO annotations file"),
                           (json.dumps({"images": [], "categories": []}), "no 'annotations' list")]:
        ann.write_text(text)
        with pytest.raises(DataError, match=fragment) as info:
            convert_coco(ann, tmp_path / "images", tmp_path / "out", progress=False)
        assert str(info.value).startswith(str(ann))
    with pytest.raises(DataError, match="missing.json: annotations file not found"):
        convert_coco(tmp_path / "missing.json", tmp_path / "images", tmp_path / "out", progress=False)
    _dataset(tmp_path, [], categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(DataError, match="category id 1 is listed twice"):
        _run(tmp_path)


def test_folder_run_goes_on_and_lists_every_bad_image(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"{name}.png", "height": 30, "width": 40}
              for i, name in enumerate(["good", "badcat", "fewpoints", "rlesize", "rlesum", "rlebroken",
                                        "nosegmentation", "wrongsize", "crowdtext"], start=1)]
    images.append({"id": 10, "file_name": "missing.png", "height": 30, "width": 40, "_missing": True})
    images.append({"id": 11, "file_name": "sub/good.png", "height": 30, "width": 40})  # same stem as 1
    annotations = [
        {"image_id": 1, "category_id": 3, "segmentation": _square(1, 1, 5, 5)},
        {"image_id": 2, "category_id": 99, "segmentation": _square(1, 1, 5, 5)},
        {"image_id": 3, "category_id": 3, "segmentation": [[1, 1, 5, 5]]},
        {"image_id": 4, "category_id": 3, "segmentation": {"size": [40, 30], "counts": [1200]}},
        {"image_id": 5, "category_id": 3, "segmentation": {"size": [30, 40], "counts": [5, 10]}},
        {"image_id": 6, "category_id": 3, "segmentation": {"size": [30, 40], "counts": "\x7f\x7f"}},
        {"image_id": 7, "category_id": 3, "segmentation": []},
        {"image_id": 9, "category_id": 3, "segmentation": _square(1, 1, 5, 5), "iscrowd": "yes"},
        {"image_id": 42, "category_id": 3, "segmentation": _square(1, 1, 5, 5)},
    ]
    _dataset(tmp_path, annotations, images=images)
    # The file for image 8 is not 40x30 as the annotations say.
    Image.fromarray(np.zeros((31, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / "wrongsize.png")
    report = _run(tmp_path)
    assert report.written == ["good"]
    ann = str(tmp_path / "annotations.json")
    messages = [message for _, message in report.failed]
    assert all(path == tmp_path / "annotations.json" for path, _ in report.failed)
    assert all(message.startswith(ann) and "\n" not in message for message in messages)
    expected = [
        "annotation id 9 refers to image_id 42, which is not in 'images'",
        "image id 2 ('badcat.png'): annotation id 2: category_id 99 is not in 'categories'",
        "image id 3 ('fewpoints.png'): annotation id 3: polygon 0 has 2 points, needs at least 3",
        "image id 4 ('rlesize.png'): annotation id 4: RLE size [40, 30] does not match",
        "image id 5 ('rlesum.png'): annotation id 5: RLE covers 15 pixels but the image has 1200",
        "image id 6 ('rlebroken.png'): annotation id 6: broken compressed RLE",
        "image id 7 ('nosegmentation.png'): annotation id 7: empty segmentation",
        "image id 8 ('wrongsize.png'): the annotations say 40x30 but the image is 40x31",
        "image id 9 ('crowdtext.png'): annotation id 8: iscrowd must be 0 or 1, got 'yes'",
        "image id 10 ('missing.png'): image file not found",
        "image id 11 ('sub/good.png'): has the same stem as 'good.png'",
    ]
    assert len(messages) == len(expected)
    for fragment in expected:
        assert any(fragment in message for message in messages), f"no failure says {fragment!r}:\n{messages}"
    assert sorted(p.name for p in (tmp_path / "out" / "SegmentationClass").iterdir()) == ["good.png"]
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_missing_images_folder_is_an_error(tmp_path: Path) -> None:
    ann = _dataset(tmp_path, [])
    with pytest.raises(DataError, match="nope: images folder not found"):
        convert_coco(ann, tmp_path / "nope", tmp_path / "out", progress=False)
