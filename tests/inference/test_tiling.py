"""inference/tiling.py owns the resize/tile decision: predict, serve and export follow it, and nobody restates it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

import masksmith
from masksmith.bundle import BundleMeta
from masksmith.inference.export import calibration_batches
from masksmith.inference.tiling import AUTO_TILE_FACTOR, auto_tile_limit, default_overlap, describe_tiling, tiling

SRC = Path(masksmith.__file__).parent
OWNER = "inference/tiling.py"
# The rules as code restates them: the overlap default, the automatic-tiling limit, the resize-mode test.
RESTATED = [re.compile(r"tile\s*//\s*4"), re.compile(r"\d\s*\*\s*max\([^)]*input_shape"),
            re.compile(r"\bresize\s*==\s*[\"']resize[\"']")]


def _meta(resize: str = "random_crop", size: int | list[int] = 64) -> BundleMeta:
    return BundleMeta(model="unet", model_options={"depth": 1, "base_channels": 8}, in_channels=3, out_channels=2,
                      class_names=["bg", "fg"], colors=[[0, 0, 0], [255, 0, 0]], size=size, resize=resize,
                      mean=[0.5] * 3, std=[0.25] * 3, mask_encoding={"kind": "index"})


def test_no_module_restates_the_tiling_rule():
    restated = [f"{path.relative_to(SRC)}:{number}: {line.strip()}"
                for path in sorted(SRC.rglob("*.py")) if str(path.relative_to(SRC)) != OWNER
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if any(pattern.search(line) for pattern in RESTATED)]
    assert restated == []


def test_the_guard_sees_a_restated_rule():
    lines = ["overlap = tile // 4", "side = 2 * max(meta.input_shape)", "if meta.resize == 'resize':"]
    assert all(any(pattern.search(line) for pattern in RESTATED) for line in lines)


def test_crop_trained_models_tile_just_above_the_limit_the_card_names():
    meta = _meta(size=[48, 64])
    limit = auto_tile_limit(meta)
    assert limit == int(AUTO_TILE_FACTOR * 64)
    assert tiling(meta, (limit, 10)) is None
    assert tiling(meta, (10, limit + 1)) == (64, default_overlap(64))
    assert f"tiles of 64 px for images over {limit} px" == describe_tiling(meta)
    assert tiling(meta, (limit + 1, 10), factor=None) is None  # automatic tiling off
    assert tiling(meta, (100, 10), tile=50, overlap=80) == (50, 49)  # the overlap stays below the tile


def test_resize_trained_models_never_tile():
    meta = _meta("resize")
    assert tiling(meta, (5000, 5000)) is None and tiling(meta, (5000, 5000), tile=64) is None
    assert describe_tiling(meta) == "none (resized to the input size)"


def test_export_calibrates_on_views_as_large_as_predict_runs_whole(tmp_path):
    meta = _meta(size=32)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 280, 3), np.uint8)).save(tmp_path / "a.png")
    (batch,) = calibration_batches(meta, [tmp_path])
    assert tuple(batch.shape[-2:]) == (auto_tile_limit(meta), auto_tile_limit(meta))
    (resized,) = calibration_batches(_meta("resize", size=32), [tmp_path])
    assert tuple(resized.shape[-2:]) == (32, 32)
