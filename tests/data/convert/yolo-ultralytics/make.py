"""Regenerate this folder with Ultralytics itself (not run by the tests; needs `ultralytics` importable).

    python tests/data/convert/yolo-ultralytics/make.py

1. draws masks (pixel value = class id + 1) and photos (seeded noise) for two splits;
2. writes the YOLO labels with Ultralytics' `convert_segment_masks_to_yolo_seg`, the tool's own
   masks → labels converter;
3. writes reference/<stem>.png: each label line filled with Ultralytics' `polygon2mask` (points scaled
   to pixels in float32, as its dataset loader does), in line order, class id + 1 (0 = background).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from ultralytics.data.converter import convert_segment_masks_to_yolo_seg
from ultralytics.data.utils import polygon2mask

HERE = Path(__file__).resolve().parent
NAMES = ["cat", "dog", "__ignore__"]
SAMPLES = {"train": ["a", "b"], "val": ["c"]}


def draw(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for value in (1, 2, 3, 1):
        cx, cy = int(rng.integers(10, width - 10)), int(rng.integers(10, height - 10))
        axes = (int(rng.integers(4, 16)), int(rng.integers(4, 12)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.integers(0, 180)), 0, 360, value, thickness=-1)
    cv2.rectangle(mask, (2, 2), (12, 9), 2, thickness=-1)
    return mask


def main() -> None:
    for folder in ("images", "labels", "reference"):
        shutil.rmtree(HERE / folder, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed, (split, stems) in enumerate(SAMPLES.items()):
            masks = Path(tmp) / split
            masks.mkdir()
            for n, stem in enumerate(stems):
                height, width = 61 + 7 * n, 83 + 5 * seed
                Image.fromarray(draw(10 * seed + n, height, width)).save(masks / f"{stem}.png")
                photo = np.random.default_rng(n).integers(0, 256, (height, width, 3), dtype=np.uint8)
                (HERE / "images" / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(photo).save(HERE / "images" / split / f"{stem}.png")
            convert_segment_masks_to_yolo_seg(str(masks), str(HERE / "labels" / split), classes=len(NAMES))
    (HERE / "reference").mkdir()
    for label in sorted((HERE / "labels").rglob("*.txt")):
        image = HERE / "images" / label.parent.name / f"{label.stem}.png"
        width, height = Image.open(image).size
        reference = np.zeros((height, width), np.uint8)
        for line in label.read_text().splitlines():
            values = line.split()
            points = np.array(values[1:], dtype=np.float32).reshape(-1, 2) * np.array([width, height], np.float32)
            reference[polygon2mask((height, width), [points.reshape(-1)]) == 1] = int(values[0]) + 1
        Image.fromarray(reference).save(HERE / "reference" / f"{label.stem}.png")
    (HERE / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n"
                                    + "".join(f"  {i}: {name}\n" for i, name in enumerate(NAMES)))


if __name__ == "__main__":
    main()
