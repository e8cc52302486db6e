"""The work budget (masksmith.inference.work_budget): what an image costs a model, the audit's inputs refused
and real photos accepted, `predict` and `evaluate` refusing a file from its header and going on with the
rest, and a checkpoint stopping tiled work midway."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.cli.app import app as cli_app
from masksmith.inference.ensemble import EnsemblePredictor
from masksmith.errors import ConfigError
from masksmith.evaluation.scoring import evaluate
from masksmith.inference.work_budget import (DEFAULT_OFFLINE_WORK_MB, MB, WorkBudget, WorkTooLarge, estimate,
                                             mode_bytes)
from masksmith.models import build_model
from masksmith.inference.predictor import Predictor, predict_files
from tests.helpers import make_shapes_dataset


def _bundle(path: Path, *, classes: int = 2, resize: str = "resize", size: int = 256, channels: int = 3,
            depth: int = 4) -> Path:
    """An untrained U-Net bundle (costs depend on its input handling and class count, not on its weights)."""
    torch.manual_seed(0)
    options = {"base_channels": 4, "depth": depth}
    network = build_model("unet", channels, classes, **options)
    meta = BundleMeta(model="unet", model_options=options, in_channels=channels, out_channels=classes,
                      class_names=[f"class {i}" for i in range(classes)], colors=[[i, i, i] for i in range(classes)],
                      size=size, resize=resize, mean=[0.5] * channels, std=[0.25] * channels,
                      mask_encoding={"kind": "index"})
    return save_bundle(path, network.state_dict(), meta)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Predictor]:
    root = tmp_path_factory.mktemp("budget")
    return {
        "membrane (resize, 1 channel, 2 classes)": Predictor.load(_bundle(root / "a.msb", channels=1), device="cpu"),
        "photos, crops of 256, 2 classes": Predictor.load(_bundle(root / "b.msb", resize="random_crop"), device="cpu"),
        "clothing (resize, 59 classes)": Predictor.load(_bundle(root / "c.msb", classes=59), device="cpu"),
        "clothing, crops of 256, 59 classes": Predictor.load(_bundle(root / "d.msb", classes=59, resize="random_crop"),
                                                             device="cpu"),
    }


def _strip_png(path: Path, width: int) -> Path:
    """A real 1 x width RGB PNG (tens of KB, as the audit's strips)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, 1)).save(path)
    return path


def test_real_photos_and_the_shipped_data_fit_the_serve_budget(models):
    budget = WorkBudget()
    for name, model in models.items():
        for height, width in [(512, 512), (873, 550), (825, 550)]:  # membrane slices, clothing photos
            budget.check(name, model, height, width)
    for name in ("membrane (resize, 1 channel, 2 classes)", "photos, crops of 256, 2 classes"):
        for height, width in [(5000, 5000), (4999, 5000), (3000, 9000)]:  # 25 MP photos, a 3:1 panorama
            cost = budget.check(name, models[name], height, width, answer="overlay")
            assert cost.peak_bytes <= budget.max_bytes


def test_the_audits_strips_are_refused_by_their_aspect_ratio_then_by_their_bytes(models):
    for name, model in models.items():
        with pytest.raises(WorkTooLarge, match=r"strip: 24000000x1 image refused before decoding: its aspect "
                                               r"ratio 24,000,000:1 is over the limit of 100:1 "
                                               r"\(raise it with --max-aspect\)"):
            WorkBudget().check("strip", model, 1, 24_000_000)
    # Without the aspect limit, padding the strip to the network's multiple costs it gigabytes of tiles.
    tiled = models["photos, crops of 256, 2 classes"]
    cost = estimate(tiled, 1, 24_000_000)
    assert cost.tiles > 100_000 and cost.peak_bytes > 8 * 2**30
    with pytest.raises(WorkTooLarge, match=r"over the work limit of 2,048 MB \(raise it with --max-work-mb\)"):
        WorkBudget(max_aspect=1e9).check("strip", tiled, 1, 24_000_000)
    with pytest.raises(WorkTooLarge, match="aspect ratio 20,000,000:1"):
        WorkBudget.offline().check("strip", tiled, 1, 20_000_000)


def test_the_cost_grows_with_classes_tiles_answers_and_ensembles(models):
    resize_2, tiled_2 = models["membrane (resize, 1 channel, 2 classes)"], models["photos, crops of 256, 2 classes"]
    resize_59 = models["clothing (resize, 59 classes)"]
    photo = (2000, 3000)
    assert estimate(resize_59, *photo).peak_bytes > 10 * estimate(resize_2, *photo).peak_bytes
    assert estimate(tiled_2, *photo).peak_bytes > estimate(resize_2, *photo).peak_bytes
    assert estimate(resize_2, *photo, answer="overlay").peak_bytes > estimate(resize_2, *photo).peak_bytes
    # 59 classes: K x H x W float32 logits and probabilities at the original size, at least 2 x 4 x 59 bytes a pixel.
    assert estimate(resize_59, *photo).peak_bytes >= 2 * 4 * 59 * 2000 * 3000
    pair = EnsemblePredictor([resize_59, resize_59])
    assert estimate(pair, *photo).peak_bytes > estimate(resize_59, *photo).peak_bytes
    assert estimate(pair, *photo).passes == 2
    assert mode_bytes("I;16") > mode_bytes("RGB") > mode_bytes("L")


def test_the_tiles_counted_are_the_tiles_the_predictor_runs(models):
    model = models["photos, crops of 256, 2 classes"]
    seen: list[int] = []
    backend = model.backend

    def counting(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        return backend(batch)

    image = np.zeros((700, 1100, 3), np.uint8)
    model.backend = counting  # type: ignore[assignment]
    try:
        model.probabilities([image])
    finally:
        model.backend = backend
    grid = model.tile_grid_for(image.shape)
    assert grid is not None and sum(seen) == grid.count == estimate(model, 700, 1100).tiles
    assert model.tile_grid_for((512, 512, 3)) is None  # up to twice the training size: one whole pass


def test_a_checkpoint_between_tile_chunks_stops_the_work(models):
    model = models["photos, crops of 256, 2 classes"]
    calls = []
    backend = model.backend

    def counting(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return backend(batch)

    class GaveUp(Exception):
        pass

    checks = []

    def checkpoint() -> None:
        checks.append(1)
        if len(checks) > 3:
            raise GaveUp

    model.backend = counting  # type: ignore[assignment]
    try:
        with pytest.raises(GaveUp):
            model.probabilities([np.zeros((900, 900, 3), np.uint8)], checkpoint)
    finally:
        model.backend = backend
    assert len(calls) == 3 and model.tile_grid_for((900, 900)).count > 3 * model.tile_batch


def test_the_offline_budget_reads_its_environment_variables(monkeypatch):
    assert WorkBudget.offline().max_bytes == DEFAULT_OFFLINE_WORK_MB * MB
    monkeypatch.setenv("MASKSMITH_MAX_WORK_MB", "512")
    monkeypatch.setenv("MASKSMITH_MAX_ASPECT", "4")
    budget = WorkBudget.offline()
    assert (budget.max_bytes, budget.max_aspect) == (512 * MB, 4.0)
    monkeypatch.setenv("MASKSMITH_MAX_WORK_MB", "lots")
    with pytest.raises(ConfigError, match="MASKSMITH_MAX_WORK_MB: expected a positive number, got 'lots'"):
        WorkBudget.offline()
    with pytest.raises(ConfigError, match="--max-aspect must be at least 1"):
        WorkBudget(max_aspect=0.5)


@pytest.mark.slow
def test_predict_refuses_the_audits_strip_from_its_header_and_predicts_the_rest(tmp_path):
    bundle = _bundle(tmp_path / "crop.msb", resize="random_crop", size=32, depth=2)
    _strip_png(tmp_path / "in" / "strip.png", 20_000_000)
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(tmp_path / "in" / "photo.png")
    result = CliRunner().invoke(cli_app, ["predict", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                          "-q"])
    assert result.exit_code == 1, result.output  # some inputs failed: listed, the others predicted
    assert "strip.png: 20000000x1 image refused before decoding" in result.output
    assert (tmp_path / "out" / "photo.png").is_file() and not (tmp_path / "out" / "strip.png").exists()
    failures = (tmp_path / "out" / "failures.csv").read_text()
    assert "strip.png: 20000000x1 image refused before decoding: its aspect ratio 20,000,000:1" in failures
    assert "MASKSMITH_MAX_ASPECT" in failures and len(failures.strip().splitlines()) == 2


def test_predict_files_counts_an_overlay_and_names_the_variable_to_raise(tmp_path, monkeypatch):
    bundle = _bundle(tmp_path / "resize.msb", size=32, depth=2)
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    monkeypatch.setenv("MASKSMITH_MAX_WORK_MB", "3")  # 300 x 400: about 2.3 MB for its mask, 4.6 with an overlay
    report = predict_files(Predictor.load(bundle), [tmp_path / "in"], tmp_path / "out", overlay_images=True,
                           progress=False)
    assert not report.written
    assert "over the work limit of 3 MB (raise it with MASKSMITH_MAX_WORK_MB)" in report.failed[0][1]
    report = predict_files(Predictor.load(bundle), [tmp_path / "in"], tmp_path / "out2", progress=False)
    assert len(report.written) == 1  # the mask alone fits


@pytest.mark.slow
def test_evaluate_lists_an_image_over_the_budget_as_failed_and_scores_the_others(tmp_path, monkeypatch):
    data = make_shapes_dataset(tmp_path / "shapes", count=3)
    Image.fromarray(np.full((600, 600, 3), 100, np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((600, 600), np.uint8)).save(data / "masks" / "big.png")
    bundle = _bundle(tmp_path / "model.msb", classes=3, size=32, depth=2)
    monkeypatch.setenv("MASKSMITH_MAX_WORK_MB", "4")  # the 600 x 600 image needs more, the 40 x 56 ones far less
    result = evaluate(bundle, data, split="all", out=tmp_path / "eval", progress=False)
    assert result["images"] == 3
    assert [row["name"] for row in result["failed"]] == ["big"]
    assert "600x600 image refused before decoding" in result["failed"][0]["reason"]
