"""What the converters share: the public calls and their report, and no output over a source file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import masksmith
from masksmith.cli.app import app
from masksmith.data.convert import convert_coco, convert_labelme
from masksmith.data.convert.common import ConvertReport
from masksmith.errors import ConfigError, MasksmithError


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


def _rotated_jpeg(path: Path) -> bytes:
    """A JPEG with an EXIF rotation tag (converters re-encode those upright, dropping the EXIF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(path, exif=exif.tobytes())
    return path.read_bytes()


def _labelme_json(path: Path, image_path: str) -> None:
    shape = {"label": "a", "points": [[2, 2], [10, 2], [10, 10]], "group_id": None, "shape_type": "polygon",
             "flags": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": [shape], "imagePath": image_path,
                                "imageData": None}))


def test_convert_labelme_into_its_source_folder_is_refused(tmp_path):
    src = tmp_path / "src"
    original = _rotated_jpeg(src / "JPEGImages" / "x.jpg")
    _labelme_json(src / "x.json", "JPEGImages/x.jpg")
    with pytest.raises(ConfigError, match="src"):
        convert_labelme(src, src, progress=False)
    result = CliRunner().invoke(app, ["convert", "labelme", str(src), str(src), "-q"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert (src / "JPEGImages" / "x.jpg").read_bytes() == original
    assert not (src / "SegmentationClass").exists()  # refused before any work


def test_convert_labelme_whose_image_is_an_output_is_refused(tmp_path):
    # The JSONs sit in data/ann/ and read data/JPEGImages/x.jpg; converting into data/ would replace it.
    data = tmp_path / "data"
    original = _rotated_jpeg(data / "JPEGImages" / "x.jpg")
    _labelme_json(data / "ann" / "x.json", "../JPEGImages/x.jpg")
    with pytest.raises(ConfigError, match=r"x\.jpg.*would overwrite the input"):
        convert_labelme(data / "ann", data, progress=False)
    assert (data / "JPEGImages" / "x.jpg").read_bytes() == original
    report = convert_labelme(data / "ann", tmp_path / "voc", progress=False)  # elsewhere it converts
    assert report.written == ["x"]


def _coco(root: Path, images_dir: Path) -> tuple[Path, bytes]:
    original = _rotated_jpeg(images_dir / "x.jpg")
    annotations = {"images": [{"id": 1, "file_name": "x.jpg", "height": 30, "width": 20}],
                   "categories": [{"id": 1, "name": "thing"}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                    "segmentation": [[2, 2, 10, 2, 10, 10]]}]}
    path = root / "annotations.json"
    path.write_text(json.dumps(annotations))
    return path, original


@pytest.mark.parametrize("out_is", ["the images folder", "the images folder's parent"])
def test_convert_coco_over_its_images_is_refused(tmp_path, out_is):
    # OUT == IMAGES (the folder rule), or IMAGES == OUT/JPEGImages (the copy would replace the original).
    images = tmp_path / "data" / "JPEGImages"
    annotations, original = _coco(tmp_path, images)
    out = images if out_is == "the images folder" else tmp_path / "data"
    result = CliRunner().invoke(app, ["convert", "coco", str(annotations), str(images), str(out), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert (images / "x.jpg").read_bytes() == original
    assert convert_coco(annotations, images, tmp_path / "voc", progress=False).written == ["x"]
