"""Annotation JSON nested deeper than the limit: a per-file error (Labelme) or one clear error (COCO), measured without recursion."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksmith.errors import DataError


def _labelme_file(path: Path, shapes_text: str) -> Path:
    """A Labelme file with a 20x30 embedded image; `shapes_text` is spliced in as raw JSON."""
    import base64

    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"version": "5.4.1", "flags": {{}}, "shapes": {shapes_text}, "imageHeight": 20, '
                    f'"imageWidth": 30, "imagePath": "{path.stem}.png", "imageData": "{image}"}}')
    return path


def _shape_points(points: str) -> str:
    return f'[{{"label": "a", "points": {points}, "group_id": null, "shape_type": "polygon", "flags": {{}}}}]'


@pytest.mark.parametrize("depth", [200, 100_000])  # 200: json.loads copes, later code would not; 100000: it fails
def test_deeply_nested_labelme_json_is_a_per_file_error(tmp_path, depth):
    from masksmith.data.convert import convert_labelme

    src = tmp_path / "src"
    _labelme_file(src / "good.json", _shape_points("[[2, 2], [20, 2], [20, 15]]"))
    _labelme_file(src / "nested.json", _shape_points("[" * depth + "]" * depth))
    report = convert_labelme(src, tmp_path / "out", ["_background_", "a"], visualize=False, progress=False)
    assert report.written == ["good"]
    assert [(p.name, why) for p, why in report.failed] == [
        ("nested.json", f"{src / 'nested.json'}: JSON nested more than 64 levels deep; annotation files nest "
                        "about 5 (a damaged or crafted file?)")]


def test_deeply_nested_coco_json_is_one_clear_error(tmp_path):
    from masksmith.data.convert import convert_coco

    (tmp_path / "images").mkdir()
    ann = tmp_path / "annotations.json"
    ann.write_text('{"images": [], "categories": [], "annotations": [{"segmentation": ' + "[" * 50_000
                   + "]" * 50_000 + "}]}")
    with pytest.raises(DataError, match=r"annotations\.json: JSON nested more than 64 levels deep") as caught:
        convert_coco(ann, tmp_path / "images", tmp_path / "out", progress=False)
    assert "\n" not in str(caught.value)


def test_nesting_depth_is_measured_without_recursion():
    from masksmith.data.convert.nesting import nesting_depth_exceeds

    deep: list = []
    for _ in range(100_000):  # deeper than Python's recursion limit
        deep = [deep]
    assert nesting_depth_exceeds(deep)
    assert not nesting_depth_exceeds({"shapes": [{"points": [[1.0, 2.0]]}]}, limit=5)  # object, list, object, list, list
    assert nesting_depth_exceeds({"shapes": [{"points": [[1.0, 2.0]]}]}, limit=4)
