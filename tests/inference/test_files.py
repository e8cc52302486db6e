"""Prediction's files: over a folder of hostile files every bad one is listed by name (links, folders, bombs)
and every good one written; no output over an input; 2-D .npy images."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import masksmith
from masksmith.cli.app import app
from tests.helpers import make_shapes_dataset, real_zero_png, tiny_trained_bundle, untrained_bundle, write_photos


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.slow
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


def _digests(folder: Path) -> dict[str, str]:
    """File name -> BLAKE2 of its bytes, for every regular file directly in `folder`."""
    return {p.name: hashlib.blake2b(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return untrained_bundle(tmp_path / "model.msb")


def _predict(bundle: Path, *args: str):
    return CliRunner().invoke(app, ["predict", str(bundle), *args, "-q"], catch_exceptions=False)


def test_predict_into_its_own_input_folder_is_refused_and_touches_nothing(tmp_path, bundle):
    inputs = tmp_path / "photos"
    write_photos(inputs, [f"p{i}.png" for i in range(8)])
    before = _digests(inputs)
    result = _predict(bundle, str(inputs), "--out", str(inputs))
    assert result.exit_code == 2, result.output
    assert "would overwrite the input" in result.output and "p0.png" in result.output
    assert "8 outputs" in result.output
    assert _digests(inputs) == before


def test_predict_one_png_into_the_current_folder_is_refused(tmp_path, bundle):
    # conftest runs every test inside tmp_path, so "." is the folder holding a.png.
    write_photos(tmp_path, ["a.png"])
    before = (tmp_path / "a.png").read_bytes()
    result = _predict(bundle, "a.png", "--out", ".")
    assert result.exit_code == 2, result.output
    assert "a.png" in result.output and "would overwrite" in result.output
    assert (tmp_path / "a.png").read_bytes() == before


def test_predict_through_a_symlinked_or_dotted_out_folder_is_refused(tmp_path, bundle):
    inputs = tmp_path / "photos"
    write_photos(inputs, ["a.png"])
    os.symlink(inputs, tmp_path / "alias")
    before = _digests(inputs)
    for out in (tmp_path / "alias", tmp_path / "elsewhere" / ".." / "photos"):
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        result = _predict(bundle, str(inputs), "--out", str(out))
        assert result.exit_code == 2, (out, result.output)
    assert _digests(inputs) == before


def test_predict_overlay_that_would_replace_an_input_is_refused(tmp_path, bundle):
    # OUT/overlays/<stem>.jpg is an output too: a JPEG input there must not be replaced by its overlay.
    out = tmp_path / "out"
    write_photos(out / "overlays", ["b.jpg"])
    before = (out / "overlays" / "b.jpg").read_bytes()
    result = _predict(bundle, str(out / "overlays" / "b.jpg"), "--out", str(out), "--overlay")
    assert result.exit_code == 2, result.output
    assert (out / "overlays" / "b.jpg").read_bytes() == before


def test_predict_jpegs_into_their_own_folder_still_works(tmp_path, bundle):
    # No input is written over (a.jpg -> a.png), so this is not refused.
    inputs = tmp_path / "photos"
    write_photos(inputs, ["a.jpg", "b.jpg"])
    result = _predict(bundle, str(inputs), "--out", str(inputs))
    assert result.exit_code == 0, result.output
    assert Image.open(inputs / "a.png").size == (32, 24)


def test_a_2d_npy_image_is_read_as_height_x_width(tmp_path, bundle):
    from masksmith.data.check import check_dataset
    from masksmith.data.images import read_image

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):  # 64 rows x 48 columns: a 2-D uint8 array is a grayscale image
        np.save(root / "images" / f"{name}.npy", rng.integers(0, 256, (64, 48), dtype=np.uint8))
        Image.fromarray(rng.integers(0, 3, (64, 48), dtype=np.uint8)).save(root / "masks" / f"{name}.png")
    image = read_image(root / "images" / "a.npy")
    assert image.shape == (64, 48, 1)
    assert np.array_equal(image[:, :, 0], np.load(root / "images" / "a.npy"))
    report = check_dataset(root, workers=1, progress=False)
    assert not report.by_code("size_mismatch"), [p.message for p in report.problems]
    result = _predict(bundle, str(root / "images" / "a.npy"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "a.png").size == (48, 64)


def _odd_entries(folder: Path) -> None:
    """A symlink loop, a dangling link and a folder, all named like images."""
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    os.symlink(folder / "nowhere" / "gone.png", folder / "dangling.png")
    (folder / "x.png").mkdir()


def test_predict_lists_links_and_folders_it_cannot_read(tmp_path, bundle):
    inputs = tmp_path / "photos"
    write_photos(inputs, ["good.png"])
    _odd_entries(inputs)
    result = _predict(bundle, str(inputs), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert "4 file(s) could not be read" in result.output
    assert "loop_a.png: symbolic link loop" in result.output
    assert "dangling.png: broken symbolic link" in result.output
    assert "x.png: is a folder" in result.output
    # The masks of the readable images, and the unreadable entries listed in failures.csv.
    assert sorted(n for n in os.listdir(tmp_path / "out") if not n.startswith(".")) == ["failures.csv", "good.png"]
    assert "dangling.png" in (tmp_path / "out" / "failures.csv").read_text()
    # The same entries found through a glob are listed too, not dropped.
    result = _predict(bundle, str(inputs / "*.png"), "--out", str(tmp_path / "out2"))
    assert result.exit_code == 1 and "dangling.png: broken symbolic link" in result.output, result.output


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> Path:
    return tiny_trained_bundle(tmp_path_factory.mktemp("limits"))


def test_predict_lists_a_real_bomb_png_and_writes_the_other_images(trained_bundle, tmp_path):
    from masksmith.inference.predictor import Predictor, predict_files

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "big.png").write_bytes(real_zero_png(10000, 10000))
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(inputs / "fine.png")
    predictor = Predictor.load(trained_bundle, device="cpu")
    report = predict_files(predictor, [str(inputs)], tmp_path / "out", progress=False)
    assert [p.name for p in report.written] == ["fine.png"]
    assert [(p.name, "10000x10000" in why and "decompression bomb" in why) for p, why in report.failed] == [
        ("big.png", True)]


def test_the_predict_batch_default_is_one_constant():
    # predict_files, the Ray engine and the CLI's --batch-size read inference.files.PREDICT_BATCH_SIZE.
    import inspect

    from masksmith.inference.config import PredictConfig
    from masksmith.inference.files import PREDICT_BATCH_SIZE
    from masksmith.inference.predictor import predict_files
    from masksmith.inference.ray_engine import RayOptions

    assert inspect.signature(predict_files).parameters["batch_size"].default == PREDICT_BATCH_SIZE
    assert RayOptions().batch_size == PREDICT_BATCH_SIZE
    assert PredictConfig.model_fields["batch_size"].default == PREDICT_BATCH_SIZE  # the CLI's --batch-size
    # Nobody restates the number as a batch default.
    import re
    from pathlib import Path

    import masksmith

    src = Path(masksmith.__file__).parent
    restated = [f"{path.relative_to(src)}:{number}" for path in sorted(src.rglob("*.py"))
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if re.search(r"(?<!\w)(batch|batch_size|tile_batch): int = \d|Option\(\d+, \"--batch-size\"", line)]
    assert restated == []
