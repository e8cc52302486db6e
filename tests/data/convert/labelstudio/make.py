"""Regenerate the Label Studio references in this folder with label-studio-sdk (not run by the tests).

    python tests/data/convert/labelstudio/make.py

* sdk-coco.json: Label Studio's own COCO export (label_studio_sdk.converter.Converter.convert_to_coco)
  of data_polygons.json, a real Label Studio export;
* brush-export.json: tasks whose brush regions Label Studio's own encoder wrote
  (label_studio_sdk.converter.brush.image2annotation) from brush-masks/*.png.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from label_studio_sdk.converter import Converter, brush
from PIL import Image

HERE = Path(__file__).resolve().parent
# (stem, height, width, label, seed); the masks have holes, specks and edge-touching parts.
BRUSHES = [("brush_a", 37, 53, "Airplane", 1), ("brush_b", 64, 48, "Car", 2)]


def brush_mask(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    mask = (xs - width / 2) ** 2 / (width / 3) ** 2 + (ys - height / 2) ** 2 / (height / 3) ** 2 <= 1
    mask &= (xs - width / 2) ** 2 + (ys - height / 2) ** 2 > 16  # a hole
    mask |= rng.random((height, width)) > 0.97  # specks
    mask[:, :2] = True  # touches the left edge
    return mask


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        converter = Converter(config=(HERE / "label_config_polygons.xml").read_text(), project_dir=tmp,
                              download_resources=False)
        converter.convert_to_coco(str(HERE / "data_polygons.json"), str(Path(tmp) / "coco"), is_dir=False)
        shutil.copy(Path(tmp) / "coco" / "result.json", HERE / "sdk-coco.json")

    (HERE / "brush-masks").mkdir(exist_ok=True)
    tasks = []
    for number, (stem, height, width, label, seed) in enumerate(BRUSHES, start=1):
        png = HERE / "brush-masks" / f"{stem}.png"
        Image.fromarray(brush_mask(height, width, seed).astype(np.uint8) * 255).save(png)
        annotation = brush.image2annotation(str(png), label_name=label, from_name="tag", to_name="image")
        tasks.append({"id": number, "data": {"image": f"/data/upload/7/0a1b2c3d-{stem}.png"},
                      "annotations": [{"id": 100 + number, "result": annotation["result"],
                                       "was_cancelled": False, "ground_truth": False}],
                      "predictions": []})
    (HERE / "brush-export.json").write_text(json.dumps(tasks, indent=1) + "\n")


if __name__ == "__main__":
    main()
