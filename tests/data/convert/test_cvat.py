"""CVAT for images 1.1 XML → VOC masks: CVAT's documented example and a datumaro-written export give the
pixels of CVAT's own "Segmentation mask" pipeline (datumaro), z_order stacks shapes, and broken or hostile
XML (entity expansion included) is refused or reported."""

from __future__ import annotations

import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from masksmith.cli.app import app
from masksmith.data.convert import convert_cvat
from masksmith.errors import DataError

from tests.helpers import dense_rectangle, read_png as _png, write_image as _image

FIXTURE = Path(__file__).parents[2] / "fixtures" / "convert" / "cvat"
META = """<meta><task><labels>
<label><name>car</name><type>any</type></label>
<label><name>road</name></label>
<label><name>__ignore__</name><type>mask</type></label>
<label><name>weather</name><type>tag</type></label>
</labels></task></meta>"""


def _xml(path: Path, images: str, meta: str = META) -> Path:
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>{meta}'
                    f"{images}</annotations>\n")
    return path


def _img(name: str, shapes: str, width: int = 50, height: int = 40, ident: int = 0) -> str:
    return f'<image id="{ident}" name="{name}" width="{width}" height="{height}">{shapes}</image>'


def _poly(label: str, points: str, z: int = 0, **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<polygon label="{label}" occluded="0" points="{points}" z_order="{z}"{extra}></polygon>'


def _box(label: str, x0: float, y0: float, x1: float, y1: float, z: int = 0, **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<box label="{label}" occluded="0" xtl="{x0}" ytl="{y0}" xbr="{x1}" ybr="{y1}" z_order="{z}"{extra}></box>'


def _mask(label: str, mask: np.ndarray, left: int, top: int, z: int = 0) -> str:
    flat = mask.astype(np.uint8).ravel()
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, flat.size]).tolist()
    if flat[0]:
        runs = [0] + runs
    return (f'<mask label="{label}" source="manual" occluded="0" rle="{", ".join(map(str, runs))}" left="{left}" '
            f'top="{top}" width="{mask.shape[1]}" height="{mask.shape[0]}" z_order="{z}"></mask>')


def _convert(tmp_path: Path, xml: Path, **kwargs):
    return convert_cvat(xml, tmp_path / "images", tmp_path / "out", visualize=False, progress=False, **kwargs)


def test_cvat_documentation_example_gives_cvats_own_pixels(tmp_path: Path) -> None:
    # docs-example.xml is the example of CVAT's "XML annotation format" page; the reference was drawn by
    # CVAT's own datumaro fork with the transforms of its "Segmentation mask" export (see make.py).
    _image(tmp_path / "images" / "filename000.jpg", 1200, 1600)
    report = _convert(tmp_path, FIXTURE / "docs-example.xml")
    assert report.failed == [] and report.written == ["filename000"]
    # Skeleton parts ("1", "2", "3") and the skeleton label are no classes; polylines and points are skipped.
    assert report.class_names == ["background", "car", "traffic_line", "wheel", "plate"]
    classes = _png(tmp_path / "out" / "SegmentationClass" / "filename000.png")
    np.testing.assert_array_equal(classes, _png(FIXTURE / "docs-example-reference.png"))
    assert classes[900, 880] == 4  # the plate box (z_order 4) over the car polygon (z_order 1)
    objects = _png(tmp_path / "out" / "SegmentationObject" / "filename000.png")
    # The mask (z_order 0, rle over a 13x15 box at 707,888) lies under the car polygon: its instance
    # shows nowhere, the polygon's everywhere.
    assert classes[895, 713] == 1 and set(np.unique(objects)) == {0, 2, 3}


def test_datumaro_export_gives_datumaros_segmentation_pixels(tmp_path: Path) -> None:
    # datumaro-export: written by datumaro's CVAT exporter (masks, polygons, boxes, z_order, a group,
    # occluded, an __ignore__ label); references drawn by datumaro as CVAT's mask export does.
    source = FIXTURE / "datumaro-export"
    shutil.copytree(source / "images", tmp_path / "images")
    report = _convert(tmp_path, source / "default.xml")
    assert report.failed == [] and report.written == ["frame_0", "frame_1"]
    assert report.class_names == ["background", "road", "car", "person"]
    for stem in report.written:
        np.testing.assert_array_equal(_png(tmp_path / "out" / "SegmentationClass" / f"{stem}.png"),
                                      _png(source / "reference" / f"{stem}.png"))
    objects = _png(tmp_path / "out" / "SegmentationObject" / "frame_0.png")
    # The occluded car mask and the car polygon share group_id 1: one instance.
    assert objects[12, 22] == objects[12, 50] != 0


def test_z_order_then_file_order_and_occluded_changes_nothing(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    shapes = (_poly("road", "0,0;50,0;50,40;0,40", z=1)                 # z 1: over both z 0 shapes
              + _poly("car", "5,5;45,5;45,35;5,35", z=0)
              + _poly("car", "20,20;30,20;30,30;20,30", z=2).replace('occluded="0"', 'occluded="1"')
              + _box("road", 0, 0, 4, 4, z=0))
    report = _convert(tmp_path, _xml(tmp_path / "a.xml", _img("a.png", shapes)))
    assert report.failed == [] and report.class_names == ["background", "car", "road"]
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    assert classes[10, 10] == 2 and classes[25, 25] == 1  # the z 2 car, occluded or not, is on top
    objects = _png(tmp_path / "out" / "SegmentationObject" / "a.png")
    assert len(set(np.unique(objects)) - {0}) == 2  # the z 0 shapes are hidden entirely


def test_masks_are_placed_at_their_box_and_clipped(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    blob = np.zeros((6, 8), bool)
    blob[1:5, 2:7] = True
    blob[0, 0] = True
    shapes = _mask("car", blob, 10, 20) + _mask("road", np.ones((5, 5), bool), 47, -2)  # overhangs the corner
    report = _convert(tmp_path, _xml(tmp_path / "a.xml", _img("a.png", shapes)))
    assert report.failed == []
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    expected = np.zeros((40, 50), np.uint8)
    expected[20:26, 10:18][blob] = 1
    expected[0:3, 47:50] = 2
    np.testing.assert_array_equal(classes, expected)


def test_rotated_box_turns_about_its_centre(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", 60, 60)
    _image(tmp_path / "images" / "b.png", 60, 60)
    xml = _xml(tmp_path / "a.xml", _img("a.png", _box("car", 10, 25, 50, 35, rotation="90.00"), 60, 60)
               + _img("b.png", _box("car", 25, 10, 35, 50), 60, 60, ident=1))
    report = _convert(tmp_path, xml)
    assert report.failed == []
    turned = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    np.testing.assert_array_equal(turned, _png(tmp_path / "out" / "SegmentationClass" / "b.png"))
    assert turned.sum() == 400  # a 10 x 40 box, half-open (pycocotools)


def test_ignore_label_skipped_shapes_and_labels_used_without_meta(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    shapes = (_poly("zebra", "0,0;50,0;50,40;0,40") + _poly("__ignore__", "0,0;10,0;10,10;0,10")
              + '<polyline label="yak" points="0,0;50,40"></polyline><points label="yak" points="3,3"></points>'
              + '<ellipse label="yak" cx="20" cy="20" rx="5" ry="5"></ellipse><tag label="yak"></tag>'
              + _poly("yak", "30,30;40,30;40,40", outside="1"))
    report = _convert(tmp_path, _xml(tmp_path / "a.xml", _img("a.png", shapes), meta=""))
    assert report.failed == []
    assert report.class_names == ["background", "yak", "zebra"]  # labels used, sorted
    classes = _png(tmp_path / "out" / "SegmentationClass" / "a.png")
    assert classes[5, 5] == 255 and classes[20, 20] == 2 and classes[35, 38] == 2


@pytest.mark.slow
def test_million_point_polygon_equals_its_corners(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "big.png", 60, 80)
    _image(tmp_path / "images" / "corners.png", 60, 80)
    x0, y0, x1, y1 = 8.0, 12.0, 70.0, 50.0
    points = dense_rectangle(x0, y0, x1, y1)
    assert len(points) == 1_000_000
    text = ";".join(f"{x:.4f},{y:.4f}" for x, y in points.tolist())
    xml = _xml(tmp_path / "a.xml", _img("big.png", _poly("car", text), 80, 60)
               + _img("corners.png", _poly("car", f"{x0},{y0};{x1},{y0};{x1},{y1};{x0},{y1}"), 80, 60, ident=1))
    report = _convert(tmp_path, xml)
    assert report.failed == []
    big = _png(tmp_path / "out" / "SegmentationClass" / "big.png")
    assert big.sum() == (x1 - x0) * (y1 - y0)
    np.testing.assert_array_equal(big, _png(tmp_path / "out" / "SegmentationClass" / "corners.png"))


def test_folder_run_goes_on_and_lists_every_bad_image(tmp_path: Path) -> None:
    square = "1,1;20,1;20,20;1,20"
    cases = {
        "few_points": (_poly("car", "1,1;20,20"), "a polygon of 2 point(s)"),
        "nan": (_poly("car", "1,1;nan,1;20,20"), "not a finite number"),
        "inf": (_box("car", 0, 0, "inf", 5), "xbr='inf' is not a finite number"),
        "word": (_poly("car", "1,1;x,1;20,20"), "points must be numbers"),
        "odd": (_poly("car", "1,1;20;20,20"), "points must be numbers, x,y pairs"),
        "unknown_label": (_poly("bus", square), "label 'bus' is not in the labels of <meta>"),
        "tag_label": (_poly("weather", square), "label 'weather' is not in"),
        "occluded": (_poly("car", square).replace('occluded="0"', 'occluded="maybe"'), "occluded='maybe'"),
        "z_order": (_poly("car", square).replace('z_order="0"', 'z_order="top"'), "z_order='top' is not a whole"),
        "rle_sum": ('<mask label="car" rle="3, 4" left="0" top="0" width="3" height="3"></mask>', "covers 7 pixels"),
        "rle_negative": ('<mask label="car" rle="3, -1, 7" left="0" top="0" width="3" height="3"></mask>',
                         "negative run length"),
        "rle_word": ('<mask label="car" rle="3, x, 6" left="0" top="0" width="3" height="3"></mask>',
                     "comma-separated whole numbers"),
        "rle_long": ('<mask label="car" rle="' + "0, " * 20 + '0" left="0" top="0" width="3" height="3"></mask>',
                     "more runs than"),
        "mask_box": ('<mask label="car" rle="" left="0" top="0" width="0" height="3"></mask>', "box is 0x3"),
        "unknown_shape": ('<circle label="car" r="3"></circle>', "unknown element <circle>"),
        "size": (_poly("car", square), "the file says 51x40 but the image is 50x40"),
        "missing": (_poly("car", square), "image file not found"),
    }
    images = []
    for number, (stem, (shapes, _)) in enumerate(cases.items()):
        if stem != "missing":
            _image(tmp_path / "images" / f"{stem}.png")
        images.append(_img(f"{stem}.png", shapes, width=51 if stem == "size" else 50, ident=number))
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG broken")
    images.append(_img("corrupt.png", _poly("car", square), ident=90))
    _image(tmp_path / "images" / "good.png")
    images.append(_img("good.png", _poly("car", "-1e12,-5;1e12,-5;1e12,10;-1e12,10"), ident=91))  # clipped
    images.append(_img("sub/good.png", _poly("car", square), ident=92))  # same stem as good.png
    report = _convert(tmp_path, _xml(tmp_path / "a.xml", "".join(images)))
    assert report.written == ["good"]
    reasons = [reason for _, reason in report.failed]
    assert len(reasons) == len(cases) + 2
    for reason, (stem, (_, fragment)) in zip(reasons, cases.items()):
        assert f"({stem}.png" in reason or f"'{stem}.png'" in reason, reason
        assert fragment in reason, (stem, reason)
    assert "corrupt.png" in reasons[-2] and "same stem as 'good.png'" in reasons[-1]
    good = _png(tmp_path / "out" / "SegmentationClass" / "good.png")
    assert good[:10].all() and not good[10:].any()


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotations><image id="0" name="a.png" width="50" height="40">
<polygon label="&lol9;" points="1,1;9,1;9,9"/></image></annotations>
"""


@pytest.mark.parametrize(("content", "fragment"), [
    (BILLION_LAUGHS, "XML declaring a DTD or entities is refused"),
    ('<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<annotations>&x;</annotations>',
     "XML declaring a DTD or entities is refused"),
    ("<annotations><image id='0' name='a.png' width='50' height='40'><polygon",
     "invalid XML: unclosed token at line 1"),
    ("", "invalid XML: no element found"),
    ("\xff\xfe<annotations/>", "invalid XML"),
    ("<dataset><image name='a.png'/></dataset>", "not a CVAT XML annotations file (root element <dataset>)"),
    ("<annotations><version>1.1</version><track id='0' label='car'/></annotations>", "a 'CVAT for video' export"),
    ("<annotations><version>1.1</version></annotations>", "no <image> elements"),
    ("<annotations><meta><task><labels><label><name>a\nb</name></label></labels></task></meta>"
     "<image id='0' name='a.png' width='50' height='40'/></annotations>", "holds a line break"),
])
def test_broken_or_hostile_xml_is_an_error_naming_it(tmp_path: Path, content: str, fragment: str) -> None:
    _image(tmp_path / "images" / "a.png")
    xml = tmp_path / "annotations.xml"
    xml.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=re.escape(fragment)) as info:
            _convert(tmp_path, xml)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "annotations.xml" in str(info.value) and "\n" not in str(info.value)
    assert peak < 20 * 2**20  # no entity was expanded (the laughs alone would be 3 GB)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_100_mb_file_is_streamed(tmp_path: Path) -> None:
    # 100 MB of <image> elements with 5,000-point polygons, all for missing images but one: each image is
    # converted (or reported) and dropped as it is read, so memory stays far below the file's size.
    _image(tmp_path / "images" / "real.png")
    xml = tmp_path / "big.xml"
    polygon = _poly("car", ";".join(f"{x % 50}.25,{x % 40}.5" for x in range(5_000)))
    with open(xml, "w") as f:
        f.write(f'<?xml version="1.0"?>\n<annotations><version>1.1</version>{META}')
        f.write(_img("real.png", _poly("car", "1,1;20,1;20,20;1,20")))
        for n in range(1, 2_001):
            f.write(_img(f"missing_{n}.png", polygon, ident=n))
        f.write("</annotations>\n")
    assert xml.stat().st_size > 100 * 2**20
    tracemalloc.start()
    try:
        report = _convert(tmp_path, xml)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.written == ["real"] and len(report.failed) == 2_000
    assert all("image file not found" in reason for _, reason in report.failed)
    assert peak < 40 * 2**20, peak


def test_missing_images_folder_or_file_is_an_error(tmp_path: Path) -> None:
    xml = _xml(tmp_path / "a.xml", _img("a.png", ""))
    with pytest.raises(DataError, match="images folder not found"):
        _convert(tmp_path, xml)
    with pytest.raises(DataError, match="nope.xml: annotations file not found"):
        _convert(tmp_path, tmp_path / "nope.xml")


def test_cli_lists_bad_images_and_exits_1(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    xml = _xml(tmp_path / "a.xml", _img("a.png", _poly("car", "1,1;20,1;20,20"))
               + _img("gone.png", _poly("car", "1,1;20,1;20,20"), ident=1))
    result = CliRunner().invoke(app, ["convert", "cvat", str(xml), str(tmp_path / "images"), str(tmp_path / "out"),
                                      "-q", "--no-viz"])
    assert result.exit_code == 1
    assert "wrote 1 masks, 3 classes" in result.output and "('gone.png'): image file not found" in result.output
    (tmp_path / "bad.xml").write_text(BILLION_LAUGHS)
    result = CliRunner().invoke(app, ["convert", "cvat", str(tmp_path / "bad.xml"), str(tmp_path / "images"),
                                      str(tmp_path / "out2")])
    assert result.exit_code == 2 and "is refused" in result.output
