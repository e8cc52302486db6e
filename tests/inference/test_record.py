"""Reliability: a prediction folder says which models and options wrote it, --resume never mixes two models'
masks, and a prediction folder is locked while a prediction writes into it (both engines)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.cli.app import app
from masksmith.core.fileio import folder_lock
from masksmith.models import build_model
RECORD_NAME = ".masksmith-predict.json"  # the record predict writes into OUT (masksmith.inference.record)


def _bundle(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    network = build_model("unet", 3, 3, depth=2, base_channels=4)
    meta = BundleMeta(model="unet", model_options={"depth": 2, "base_channels": 4}, in_channels=3, out_channels=3,
                      class_names=["bg", "a", "b"], colors=[[0, 0, 0], [255, 0, 0], [0, 0, 255]], size=32,
                      resize="random_crop", mean=[0.5] * 3, std=[0.25] * 3, mask_encoding={"kind": "index"})
    return save_bundle(path, network.state_dict(), meta)


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    """Two different untrained bundles."""
    return _bundle(tmp_path / "first.msb", 0), _bundle(tmp_path / "second.msb", 1)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"p{index}.png")
    return folder


def _predict(*args: str):
    return CliRunner().invoke(app, ["predict", *map(str, args), "-q"])


def _masks(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.png"))}


@pytest.mark.slow
def test_the_folder_records_the_model_options_and_inputs(tmp_path, models, photos):
    out = tmp_path / "out"
    assert _predict(models[0], photos, "--out", out, "--blend", "linear").exit_code == 0
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["models"] == [{"path": str(models[0]), "sha256": hashlib.sha256(models[0].read_bytes()).hexdigest()}]
    assert record["options"]["--blend"] == "linear" and record["options"]["--tta"] is False
    assert record["inputs"] == [str(photos.resolve())]


@pytest.mark.slow
def test_resume_with_another_model_is_refused_naming_both(tmp_path, models, photos):
    out = tmp_path / "out"
    first = photos / "p0.png"
    assert _predict(models[0], first, "--out", out).exit_code == 0
    before = _masks(out)
    result = _predict(models[1], photos, "--out", out, "--resume")
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())  # the terminal's width may wrap the one line
    assert "cannot --resume" in line and "first.msb (sha256 " in line and "second.msb (sha256 " in line
    assert "Traceback" not in result.output
    assert _masks(out) == before  # nothing of the second model was written


@pytest.mark.parametrize("changed", [["--blend", "linear"], ["--tta"], ["--tile", "16"], ["--mask-format", "dataset"]])
def test_resume_with_other_options_is_refused_naming_the_option(tmp_path, models, photos, changed):
    out = tmp_path / "out"
    assert _predict(models[0], photos / "p0.png", "--out", out).exit_code == 0
    result = _predict(models[0], photos, "--out", out, "--resume", *changed)
    assert result.exit_code == 2, result.output
    assert changed[0] in result.output and "cannot --resume" in result.output
    assert sorted(_masks(out)) == ["p0.png"]


def test_resume_with_the_same_model_and_options_continues_and_adds_the_inputs(tmp_path, models, photos):
    out = tmp_path / "out"
    assert _predict(models[0], photos / "p0.png", "--out", out, "--tta").exit_code == 0
    result = _predict(models[0], photos, "--out", out, "--resume", "--tta", "--overlay")  # overlays may be added
    assert result.exit_code == 0, result.output
    assert "wrote 4 masks" in result.output  # p0 again too: its overlay was missing
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["inputs"] == [str((photos / "p0.png").resolve()), str(photos.resolve())]


@pytest.mark.slow
def test_predicting_again_without_resume_replaces_the_record_and_warns(tmp_path, models, photos):
    out = tmp_path / "out"
    assert _predict(models[0], photos, "--out", out).exit_code == 0
    with pytest.warns(UserWarning, match=r"held predictions of first\.msb \(sha256 [0-9a-f]{12}\)"):
        result = _predict(models[1], photos / "p0.png", "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / RECORD_NAME).read_text())
    assert [Path(item["path"]).name for item in record["models"]] == ["second.msb"]


def test_a_damaged_record_is_one_line_with_resume_and_replaced_without(tmp_path, models, photos):
    out = tmp_path / "out"
    assert _predict(models[0], photos / "p0.png", "--out", out).exit_code == 0
    (out / RECORD_NAME).write_bytes(b"\xff\x00" * 100)
    result = _predict(models[0], photos, "--out", out, "--resume")
    assert result.exit_code == 2 and "not a masksmith prediction record" in result.output
    assert _predict(models[0], photos, "--out", out).exit_code == 0
    assert json.loads((out / RECORD_NAME).read_text())["format"] == "masksmith-predictions"


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_folder_another_prediction_writes_into_is_refused_at_once(tmp_path, models, photos, engine, monkeypatch):
    out = tmp_path / "out"

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the lock was checked")

    monkeypatch.setattr("masksmith.inference.ensemble.load_models", no_loading)
    with folder_lock(out, kind="prediction"):
        result = _predict(models[0], photos, "--out", out, "--engine", engine)
    assert result.exit_code == 2, result.output
    assert "in use by another prediction" in result.output
    # Refused before anything was written (and, for Ray, before a cluster was started).
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
