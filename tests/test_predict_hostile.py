"""`predict` over a folder of hostile files: every bad file is listed by name, every good one is written."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import masksmith
from masksmith.cli.app import app
from tests.helpers import make_shapes_dataset


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_predict_lists_every_hostile_file_and_writes_the_rest(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    run = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2, auto=False,
                          model_options={"base_channels": 8, "depth": 3}, out=str(tmp_path / "run"), quiet=True)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(good).save(inputs / "good.png")
    Image.fromarray(good[:1, :1]).save(inputs / "one_pixel.png")
    (inputs / "zero.png").write_bytes(b"")
    png = (inputs / "good.png").read_bytes()
    (inputs / "truncated.png").write_bytes(png[: len(png) // 2])
    (inputs / "text.png").write_text("hello, I am not an image")
    (inputs / "bomb.png").write_bytes(bomb_png(40000, 40000))
    with open(os.path.join(os.fsencode(inputs), b"caf\xe9.png"), "wb") as handle:
        handle.write(png)
    result = CliRunner().invoke(app, ["predict", str(run.bundle), str(inputs), "--out", str(tmp_path / "out"), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 1, result.output
    for name in ("zero.png", "truncated.png", "text.png", "bomb.png"):
        assert name in result.output, result.output
    written = sorted(os.listdir(os.fsencode(tmp_path / "out")))
    assert b"good.png" in written and b"one_pixel.png" in written and b"caf\xe9.png" in written
    assert Image.open(tmp_path / "out" / "one_pixel.png").size == (1, 1)
