"""Labelme JSON → VOC masks: Labelme's own example outputs reproduced pixel for pixel, every shape
type on small synthetic files, and every kind of broken input reported by file name."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksmith.data.convert import convert_labelme
from masksmith.data.convert.common import ConvertReport
from masksmith.data.convert.labelme import read_labels, shape_to_mask
from masksmith.errors import DataError
from tests.conftest import SHARED_DATA

EXAMPLES = SHARED_DATA / "labelme-examples"
STEMS = ["2011_000003", "2011_000006", "2011_000025"]


def _example(kind: str) -> Path:
    root = EXAMPLES / kind
    if not root.is_dir():
        pytest.skip(f"real data not present: {root}")
    return root


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P", f"{path} is {image.mode}, expected a palette PNG"
        return np.array(image)


# --------------------------------------------------------------------------- Labelme's examples


def test_semantic_example_matches_labelme_pixel_for_pixel(tmp_path: Path) -> None:
    root = _example("semantic_segmentation")
    expected = root / "data_dataset_voc"
    report = convert_labelme(root / "data_annotated", tmp_path, root / "labels.txt", progress=False)
    assert report.failed == []
    assert report.written == STEMS
    assert (tmp_path / "class_names.txt").read_bytes() == (expected / "class_names.txt").read_bytes()
    assert report.class_names == (expected / "class_names.txt").read_text().splitlines()
    for stem in STEMS:
        ours = _png(tmp_path / "SegmentationClass" / f"{stem}.png")
        theirs = _png(expected / "SegmentationClass" / f"{stem}.png")
        assert ours.shape == theirs.shape
        assert np.array_equal(ours, theirs), f"{stem}: {int((ours != theirs).sum())} pixels differ"
        assert (tmp_path / "SegmentationClassVisualization" / f"{stem}.jpg").is_file()
        # An upright JPEG is copied byte for byte, not re-encoded.
        source = (root / "data_annotated" / f"{stem}.jpg").read_bytes()
        assert (tmp_path / "JPEGImages" / f"{stem}.jpg").read_bytes() == source
    # No shape has a group_id, so this is a semantic dataset: no instance masks.
    assert not (tmp_path / "SegmentationObject").exists()
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"


def test_instance_example_matches_labelme_pixel_for_pixel(tmp_path: Path) -> None:
    root = _example("instance_segmentation")
    expected = root / "data_dataset_voc"
    report = convert_labelme(root / "data_annotated", tmp_path, root / "labels.txt", progress=False)
    assert report.failed == [] and report.written == STEMS
    assert (tmp_path / "class_names.txt").read_bytes() == (expected / "class_names.txt").read_bytes()
    for folder in ("SegmentationClass", "SegmentationObject"):
        for stem in STEMS:
            ours = _png(tmp_path / folder / f"{stem}.png")
            theirs = _png(expected / folder / f"{stem}.png")
            assert np.array_equal(ours, theirs), f"{folder}/{stem}: {int((ours != theirs).sum())} pixels differ"
    assert (tmp_path / "SegmentationObjectVisualization" / "2011_000006.jpg").is_file()
    # Labelme's numbering: the __ignore__ shape took id 6, so the grouped sofa is 7.
    assert set(np.unique(_png(tmp_path / "SegmentationObject" / "2011_000006.png"))) == {0, 1, 2, 3, 4, 5, 7}


def test_labels_none_uses_sorted_labels_found(tmp_path: Path) -> None:
    root = _example("semantic_segmentation")
    report = convert_labelme(root / "data_annotated", tmp_path, visualize=False, progress=False)
    assert report.failed == []
    assert report.class_names == ["_background_", "bottle", "bus", "car", "chair", "person", "sofa"]
    assert (tmp_path / "class_names.txt").read_text().splitlines() == report.class_names
    mask = _png(tmp_path / "SegmentationClass" / "2011_000003.png")
    reference = _png(root / "data_dataset_voc" / "SegmentationClass" / "2011_000003.png")
    # Same regions, renumbered: VOC person 15 → 5 here, bottle 5 → 1, ignore stays 255.
    lut = np.arange(256)
    lut[[15, 5]] = [5, 1]
    assert np.array_equal(mask, lut[reference])


# --------------------------------------------------------------------------- synthetic files


def _b64_image(array: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _shape(label: str, points: list, shape_type: str = "polygon", group_id=None, **extra) -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": shape_type, "flags": {}, **extra}


def _write_json(path: Path, shapes: list[dict], size: tuple[int, int] = (40, 60), *, embed: bool = True,
                image_path: str | None = None, **overrides) -> Path:
    """A Labelme file for an HxW gray image, embedded (imageData) or written beside it (imagePath)."""
    height, width = size
    image = np.full((height, width, 3), 120, dtype=np.uint8)
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imageHeight": height, "imageWidth": width,
            "imagePath": image_path or f"{path.stem}.png", "imageData": None}
    if embed:
        data["imageData"] = _b64_image(image)
    elif image_path is None:
        Image.fromarray(image).save(path.with_suffix(".png"))
    data.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _convert(src: Path, out: Path, labels=("__ignore__", "_background_", "a", "b"), **kwargs) -> ConvertReport:
    kwargs.setdefault("visualize", False)
    return convert_labelme(src, out, list(labels) if labels is not None else None, progress=False, **kwargs)


def _class_mask(out: Path, stem: str = "x") -> np.ndarray:
    return _png(out / "SegmentationClass" / f"{stem}.png")


def test_rectangle_fills_its_box_corners_inclusive(tmp_path: Path) -> None:
    # Drawn right-to-left, bottom-to-top: the corners are ordered before filling.
    _write_json(tmp_path / "src" / "x.json", [_shape("a", [[30.7, 25.2], [10.2, 5.9]], "rectangle")])
    report = _convert(tmp_path / "src", tmp_path / "out")
    assert report.failed == [] and report.written == ["x"]
    mask = _class_mask(tmp_path / "out")
    expected = np.zeros((40, 60), dtype=np.uint8)
    expected[5:26, 10:31] = 1  # coordinates truncate to ints, both corners included
    assert np.array_equal(mask, expected)


def test_circle_area_is_pi_r_squared() -> None:
    mask = shape_to_mask((100, 100), "circle", [[50, 50], [50, 70]])
    area = mask.sum()
    assert abs(area - math.pi * 20**2) / (math.pi * 20**2) < 0.05
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - 50) < 1 and abs(xs.mean() - 50) < 1


def test_point_is_a_small_disc_and_line_is_ten_pixels_wide() -> None:
    point = shape_to_mask((40, 40), "point", [[20, 20]])
    assert 0.7 * math.pi * 25 < point.sum() < 1.5 * math.pi * 25
    assert point[20, 20] and not point[20, 27]
    line = shape_to_mask((40, 60), "line", [[5, 20], [45, 20]])
    rows, cols = np.nonzero(line)
    assert rows.max() - rows.min() + 1 == 10  # line_width
    assert (cols.min(), cols.max()) == (5, 45)
    strip = shape_to_mask((60, 60), "linestrip", [[5, 5], [50, 5], [50, 50]])
    assert strip[5, 30] and strip[30, 50] and not strip[30, 30]


def test_later_shapes_are_drawn_over_earlier_ones(tmp_path: Path) -> None:
    shapes = [_shape("a", [[0, 0], [59, 39]], "rectangle"), _shape("b", [[10, 10], [20, 20]], "rectangle")]
    _write_json(tmp_path / "src" / "x.json", shapes)
    _convert(tmp_path / "src", tmp_path / "out")
    mask = _class_mask(tmp_path / "out")
    assert mask[15, 15] == 2 and mask[5, 5] == 1 and mask[30, 50] == 1
    assert (mask == 2).sum() == 11 * 11


def test_mask_shape_is_placed_at_its_box(tmp_path: Path) -> None:
    bitmap = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=np.uint8)
    shapes = [_shape("a", [[5, 3], [8, 5]], "mask", mask=_b64_image(bitmap)),
              # partly outside the image: clipped, not an error
              _shape("b", [[58, 38], [61, 40]], "mask", mask=_b64_image(bitmap))]
    _write_json(tmp_path / "src" / "x.json", shapes)
    report = _convert(tmp_path / "src", tmp_path / "out")
    assert report.failed == []
    mask = _class_mask(tmp_path / "out")
    assert np.array_equal(mask[3:6, 5:9], bitmap)
    assert mask[:, :58].sum() == bitmap.sum() and np.array_equal(mask[38:, 58:], 2 * bitmap[:2, :2])


def test_image_data_is_used_and_wins_over_image_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    # imagePath names a different, smaller image; the embedded one must be used.
    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(src.mkdir() or src / "other.png")
    _write_json(src / "x.json", [_shape("a", [[1, 1], [10, 10]], "rectangle")], image_path="other.png")
    report = _convert(src, tmp_path / "out")
    assert report.failed == [] and _class_mask(tmp_path / "out").shape == (40, 60)
    jpeg = np.asarray(Image.open(tmp_path / "out" / "JPEGImages" / "x.jpg"))
    assert jpeg.shape == (40, 60, 3) and abs(int(jpeg.mean()) - 120) <= 2


def test_image_path_may_go_up_a_folder(tmp_path: Path) -> None:
    Image.fromarray(np.full((40, 60, 3), 50, dtype=np.uint8)).save(tmp_path / "photo.png")
    _write_json(tmp_path / "ann" / "x.json", [_shape("a", [[1, 1], [3, 3]], "rectangle")], embed=False,
                image_path="../photo.png")
    report = _convert(tmp_path / "ann", tmp_path / "out")
    assert report.failed == [] and report.written == ["x"]


def test_instances_follow_labelme_grouping(tmp_path: Path) -> None:
    shapes = [
        _shape("a", [[0, 0], [9, 9]], "rectangle", group_id=1),
        _shape("a", [[20, 0], [29, 9]], "rectangle"),  # no group_id: an instance of its own
        _shape("a", [[40, 0], [49, 9]], "rectangle", group_id=1),  # joins the first
        _shape("__ignore__", [[0, 20], [9, 29]], "rectangle"),  # takes an id, shows as 0
        _shape("b", [[20, 20], [29, 29]], "rectangle", group_id=1),  # same group_id, other label
    ]
    _write_json(tmp_path / "src" / "x.json", shapes)
    _write_json(tmp_path / "src" / "y.json", [_shape("b", [[0, 0], [3, 3]], "rectangle")])
    report = _convert(tmp_path / "src", tmp_path / "out")
    assert report.failed == []
    objects = _png(tmp_path / "out" / "SegmentationObject" / "x.png")
    assert objects[5, 5] == objects[5, 45] == 1
    assert objects[5, 25] == 2
    assert objects[25, 5] == 0 and _class_mask(tmp_path / "out")[25, 5] == 255
    assert objects[25, 25] == 4
    # Every file of a grouped run gets an instance mask, grouped itself or not.
    assert (tmp_path / "out" / "SegmentationObject" / "y.png").is_file()
    no_objects = _convert(tmp_path / "src", tmp_path / "out2", instances=False)
    assert no_objects.failed == [] and not (tmp_path / "out2" / "SegmentationObject").exists()


def test_labels_file_conventions(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ncat\n\ndog\n")
    assert read_labels(labels) == (["_background_", "cat", "dog"],
                                   {"_background_": 0, "cat": 1, "dog": 2, "__ignore__": 255})
    # Without _background_ it is added at 0; the order of the others is kept.
    assert read_labels(["zebra", "ant"])[0] == ["_background_", "zebra", "ant"]
    labels.write_text("cat\ncat\n")
    with pytest.raises(DataError, match="labels.txt: label 'cat' is listed twice"):
        read_labels(labels)
    with pytest.raises(DataError, match="missing.txt: labels file not found"):
        read_labels(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- hostile input


def _bad_files(src: Path) -> dict[str, str]:
    """Write one broken file per case; return stem -> a fragment its error message must hold."""
    cases: dict[str, str] = {}

    def raw(stem: str, text: str, fragment: str) -> None:
        (src / f"{stem}.json").write_text(text)
        cases[stem] = fragment

    def shaped(stem: str, shapes: list, fragment: str, **kw) -> None:
        _write_json(src / f"{stem}.json", shapes, **kw)
        cases[stem] = fragment

    raw("invalid_json", '{"shapes": [', "invalid JSON")
    raw("empty", "", "file is empty")
    raw("no_shapes", json.dumps({"version": "5.0", "imagePath": "x.png"}), "not a Labelme annotation")
    raw("a_list", "[1, 2, 3]", "not a Labelme annotation")
    shaped("few_points", [_shape("a", [[1, 1], [5, 5]])], "needs at least 3 points, got 2")
    shaped("text_coordinate", [_shape("a", [[1, 1], ["x", 5], [9, 9]])], "not two finite numbers")
    shaped("null_coordinate", [_shape("a", [[1, 1], [None, 5], [9, 9]])], "not two finite numbers")
    shaped("bool_coordinate", [_shape("a", [[1, 1], [True, 5], [9, 9]])], "not two finite numbers")
    shaped("nan_coordinate", [_shape("a", [[1, 1], [float("nan"), 5], [9, 9]])], "not two finite numbers")
    shaped("point_not_pair", [_shape("a", [[1, 1, 1], [5, 5], [9, 9]])], "not two finite numbers")
    shaped("unknown_type", [_shape("a", [[1, 1], [5, 5], [9, 1]], "hexagon")], "unknown shape_type 'hexagon'")
    shaped("unknown_label", [_shape("zebra", [[1, 1], [5, 5], [9, 1]])], "label 'zebra', which is not in")
    shaped("broken_base64", [], "bad imageData: broken base64", imageData="not*base64!")
    shaped("not_an_image", [], "bad imageData: decoded bytes are not an image",
           imageData=base64.b64encode(b"hello world").decode())
    shaped("missing_image", [], "image not found: imagePath '../../nowhere/x.jpg'", embed=False,
           image_path="../../nowhere/x.jpg")
    shaped("wrong_size", [], "imageHeight is 99 but the image is 60x40", imageHeight=99)
    shaped("no_image", [], "neither imageData nor an imagePath", embed=False, imagePath=None)
    shaped("bad_mask", [_shape("a", [[1, 1], [4, 4]], "mask", mask="@@@")], "bad 'mask'")
    shaped("mask_size", [_shape("a", [[1, 1], [9, 9]], "mask", mask=_b64_image(np.ones((2, 2), np.uint8)))],
           "mask bitmap is 2x2 but its box")
    return cases


def test_folder_run_goes_on_past_every_kind_of_broken_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cases = _bad_files(src)
    _write_json(src / "good.json", [_shape("a", [[1, 1], [5, 5], [9, 1]])])
    report = _convert(src, tmp_path / "out", visualize=True)
    assert report.written == ["good"]
    failed = {path.stem: message for path, message in report.failed}
    assert sorted(failed) == sorted(cases)
    for stem, fragment in cases.items():
        message = failed[stem]
        assert message.startswith(str(src / f"{stem}.json")), message  # names the file first
        assert fragment in message, f"{stem}: {message!r} lacks {fragment!r}"
        assert "\n" not in message
        assert not (tmp_path / "out" / "SegmentationClass" / f"{stem}.png").exists()
    assert (tmp_path / "out" / "SegmentationClass" / "good.png").is_file()
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_huge_coordinates_are_clipped_not_crashing(tmp_path: Path) -> None:
    shapes = [
        _shape("a", [[-1e300, -1e300], [1e300, 20], [30, 1e18]]),
        _shape("a", [[10, 10], [1e15, 1e15]], "line"),
        _shape("b", [[-1e20, 30], [1e20, 35]], "rectangle"),
        _shape("b", [[1e9, 1e9], [1e9 + 5, 1e9]], "circle"),  # far away: nothing to draw
        _shape("b", [[30, 20], [30, 20 + 1e9]], "circle"),  # covers everything
        _shape("a", [[-5e9, -7e9]], "point"),
    ]
    _write_json(tmp_path / "src" / "x.json", shapes)
    report = _convert(tmp_path / "src", tmp_path / "out")
    assert report.failed == [] and report.written == ["x"]
    assert (_class_mask(tmp_path / "out") == 2).all()
    # Each alone, against what it must cover.
    band = shape_to_mask((40, 60), "rectangle", [[-1e20, 30], [1e20, 35]])
    assert band[30:36].all() and band.sum() == 6 * 60
    wedge = shape_to_mask((40, 60), "polygon", [[0, 0], [1e12, 0], [0, 1e12]])
    assert wedge.all()
    half = shape_to_mask((40, 60), "polygon", [[-1e13, -5], [1e13, -5], [1e13, 20], [-1e13, 20]])
    assert half[:21].all() and not half[21:].any()


def test_empty_or_missing_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no json here")
    with pytest.raises(DataError, match=r"empty: no Labelme \*\.json files"):
        _convert(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="nope: not a folder"):
        _convert(tmp_path / "nope", tmp_path / "out")


def test_example_with_a_broken_copy_still_converts_the_rest(tmp_path: Path) -> None:
    root = _example("semantic_segmentation")
    src = tmp_path / "src"
    shutil.copytree(root / "data_annotated", src)
    data = json.loads((src / "2011_000006.json").read_text())
    data["shapes"][2]["label"] = "unicorn"
    (src / "2011_000006.json").write_text(json.dumps(data))
    report = convert_labelme(src, tmp_path / "out", root / "labels.txt", visualize=False, progress=False)
    assert report.written == ["2011_000003", "2011_000025"]
    [(path, message)] = report.failed
    assert path == src / "2011_000006.json"
    assert message == (f"{src / '2011_000006.json'}: shape 2 has label 'unicorn', which is not in "
                       f"{root / 'labels.txt'}")


# --------------------------------------------------------------------------- the fill rule


def test_polygon_corner_rule_is_pillow_9s_whatever_pillow_is_installed() -> None:
    # The sofa triangle of 2011_000006 whose top corner Pillow 9 widens to 2 pixels (Labelme's
    # reference has them); the installed Pillow draws 1, so this pins our own rule, not Pillow's.
    triangle = [[103.94, 290.56], [58.94, 303.56], [97.94, 311.56]]
    mask = shape_to_mask((375, 500), "polygon", triangle)
    assert np.flatnonzero(mask[290]).tolist() == [103, 104]
    assert np.flatnonzero(mask[291]).tolist() == [100, 101, 102, 103]


def test_bulk_rows_agree_with_the_row_by_row_rule() -> None:
    from masksmith.data.convert.labelme_raster import (
        _corner_row,
        _Edges,
        _fill_polygon,
        _round_down,
        _round_up,
    )

    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(5, 40, 2))
        vertices = rng.integers(-8, 45, (int(rng.integers(3, 9)), 2)).astype(np.int64)
        bulk = np.zeros((height, width), dtype=bool)
        _fill_polygon(bulk, vertices)
        # The same rule applied to every row one at a time (the path used for corner rows only).
        closed = np.vstack([vertices, vertices[:1]])
        x0, y0, x1, y1 = closed[:-1, 0], closed[:-1, 1], closed[1:, 0], closed[1:, 1]
        plain = np.zeros((height, width), dtype=bool)
        for y, a, b in zip(y0[y0 == y1], x0[y0 == y1], x1[y0 == y1]):
            if 0 <= y < height:
                plain[y, max(min(a, b), 0):max(min(max(a, b) + 1, width), 0)] = True
        slanted = y0 != y1
        if slanted.any():
            edges = _Edges(x0[slanted], y0[slanted], x1[slanted], y1[slanted])
            top = max(0, min(height - 1, int(min(y0.min(), y1.min()))))
            last = min(height, max(0, int(max(y0.max(), y1.max()))))
            for y in range(top, min(last, height - 1) + 1):
                xs = np.sort(np.asarray(_corner_row(edges, y, last), dtype=np.float32))
                for left, right in zip(_round_up(xs[0::2][: len(xs) // 2]), _round_down(xs[1::2])):
                    left, right = max(int(left), 0), min(int(right), width - 1)
                    if left <= right:
                        plain[y, left:right + 1] = True
        assert np.array_equal(bulk, plain), vertices.tolist()
