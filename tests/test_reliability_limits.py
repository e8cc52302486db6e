"""Reliability limits: train enforces its data check, one pixel limit for every command, validated metadata."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import masksmith
from masksmith.data.limits import DEFAULT_MAX_IMAGE_PIXELS, ENV_VAR, ImageTooLarge, image_pixel_limit
from masksmith.data.masks import read_image
from masksmith.errors import DataError
from tests.helpers import make_shapes_dataset

TINY = dict(size=16, epochs=2, batch_size=2, model_options={"base_channels": 4, "depth": 2}, early_stopping=0,
            quiet=True, auto=False, num_workers=0)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def real_zero_png(width: int, height: int) -> bytes:
    """A complete, decodable all-zero grayscale PNG, compressed row by row (never width x height in memory)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then the row's pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    noise = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


# --- item 4: train enforces what its check finds ------------------------------------------------------------


def test_train_fails_on_a_truncated_jpeg_before_training_and_names_it(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=6)
    _truncated_jpeg(data / "images" / "s03.jpg")
    with pytest.raises(DataError, match=r"s03\.jpg.*truncated") as caught:
        masksmith.train(data, out=str(tmp_path / "run"), **TINY)
    assert "1 problem(s)" in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first step


def test_train_skip_invalid_leaves_the_truncated_jpeg_out_and_lists_it(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=8)
    _truncated_jpeg(data / "images" / "s03.jpg")
    with pytest.warns(UserWarning, match=r"(?s)skipping 1 bad pair.*s03\.jpg: cannot read image: .*truncated"):
        result = masksmith.train(data, out=str(tmp_path / "run"), skip_invalid=True, val_fraction=0.5, **TINY)
    split = json.loads((result.run_dir / "split.json").read_text())
    used = split["train"] + split["val"]
    assert "s03" not in used and sorted(used) == [f"s0{i}" for i in range(8) if i != 3]
    assert "s03" not in masksmith.bundle.read_meta(result.bundle).split["val"]  # evaluate --split val skips it too
    assert result.bundle.is_file()


def test_a_real_10000_square_png_is_refused_before_decoding(tmp_path):
    # 100 Mpx: above the default limit but below PIL's own error limit, so PIL alone would decode it (GBs).
    path = tmp_path / "big.png"
    path.write_bytes(real_zero_png(10000, 10000))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageTooLarge, match=r"big\.png: image refused.*10000x10000 = 100000000 pixels.*89478485"):
        read_image(path)


def test_the_limit_is_configurable_by_environment_and_context(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    assert read_image(path).shape == (30, 40, 1)
    monkeypatch.setenv(ENV_VAR, "1000")
    with pytest.raises(ImageTooLarge, match=r"40x30 = 1200 pixels, over the limit of 1000"):
        read_image(path)
    with image_pixel_limit(1200):
        assert read_image(path).shape == (30, 40, 1)
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(masksmith.errors.ConfigError, match=ENV_VAR):
        read_image(path)
    monkeypatch.delenv(ENV_VAR)
    with image_pixel_limit(None):
        assert read_image(path).shape == (30, 40, 1)
    assert DEFAULT_MAX_IMAGE_PIXELS == 89_478_485


def test_a_limit_above_pils_own_is_honoured(tmp_path):
    # PIL refuses above 2 x its MAX_IMAGE_PIXELS inside Image.open; masksmith's limit, not PIL's, decides.
    path = tmp_path / "wide.png"
    path.write_bytes(real_zero_png(20000, 10000))  # 200 Mpx > PIL's error limit of 179 Mpx
    with image_pixel_limit(200_000_000):
        with masksmith.data.limits.open_image(path) as image:
            assert image.size == (20000, 10000)
    with pytest.raises(ImageTooLarge, match="20000x10000"):
        with masksmith.data.limits.open_image(path):
            pass


def test_train_refuses_an_image_over_its_max_image_pixels(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", count=6)  # 56x40 = 2240 pixels each
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    with pytest.raises(DataError, match=r"big\.png: image refused as a possible decompression bomb: 80x80 = 6400"):
        masksmith.train(data, out=str(tmp_path / "run"), max_image_pixels=5000, val_fraction=0.5, **TINY)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny 3-class U-Net bundle trained for one epoch on the synthetic shapes."""
    root = tmp_path_factory.mktemp("limits")
    data = make_shapes_dataset(root / "shapes", count=6)
    return masksmith.train(data, out=str(root / "run"), **{**TINY, "epochs": 1}).bundle


def test_predict_lists_a_real_bomb_png_and_writes_the_other_images(bundle, tmp_path):
    from masksmith.predict import Predictor, predict_files

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "big.png").write_bytes(real_zero_png(10000, 10000))
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(inputs / "fine.png")
    report = predict_files(Predictor.load(bundle, device="cpu"), [str(inputs)], tmp_path / "out", progress=False)
    assert [p.name for p in report.written] == ["fine.png"]
    assert [(p.name, "10000x10000" in why and "decompression bomb" in why) for p, why in report.failed] == [
        ("big.png", True)]


def test_evaluate_refuses_an_image_over_the_limit_by_name(bundle, tmp_path, monkeypatch):
    data = make_shapes_dataset(tmp_path / "data", count=3)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    monkeypatch.setenv(ENV_VAR, "5000")
    with pytest.raises(DataError, match=r"images/big\.png: image refused as a possible decompression bomb: 80x80"):
        masksmith.evaluate(bundle, data, split="all", out=tmp_path / "eval", progress=False)


def test_check_uses_the_same_limit(tmp_path, monkeypatch):
    from masksmith.data.check import check_dataset

    data = make_shapes_dataset(tmp_path / "data", count=3)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    assert not check_dataset(data, workers=1, progress=False).by_code("too_large")
    monkeypatch.setenv(ENV_VAR, "5000")
    report = check_dataset(data, workers=1, progress=False)
    assert sorted(Path(p).parent.name for problem in report.by_code("too_large") for p in problem.paths) == [
        "images", "masks"]
