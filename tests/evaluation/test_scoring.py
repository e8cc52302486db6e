"""masksmith.evaluate: --tta scores the flip-averaged predictions and says so; all-ignore images are left out
of the per-image mean; an image over the pixel limit is listed by name; galleries stay small."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import masksmith
from masksmith.bundle import load_bundle, save_bundle
from masksmith.cli.app import app
from masksmith.data.discover import discover
from masksmith.data.encoding import MaskEncoding
from masksmith.data.limits import ENV_VAR
from masksmith.data.masks import read_mask
from masksmith.errors import MasksmithError
from masksmith.evaluation.metrics import ConfusionMatrix
from masksmith.inference.predictor import Predictor
from tests.helpers import make_shapes_dataset, tiny_trained_bundle, untrained_bundle, write_photos
from tests.trained_models import shapes_model


def _confusion(predictor: Predictor, data) -> np.ndarray:
    """The confusion matrix of `predictor` over every pair of `data`, built here without evaluate."""
    meta = predictor.meta
    confusion = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    for sample in sorted((s for samples in discover(data).values() for s in samples), key=lambda s: s.name):
        truth = read_mask(sample.mask, MaskEncoding.from_dict(meta.mask_encoding), meta.num_classes, meta.ignore_index)
        confusion.update(predictor.predict(sample.image), truth)
    return confusion.matrix


@pytest.mark.slow
def test_tta_scores_are_the_flip_averaged_predictions(tmp_path):
    trained, data = shapes_model()
    # As if trained with flips (the shared model's augmentation has none): TTA averages 4 views.
    meta, weights = load_bundle(trained)
    bundle = save_bundle(tmp_path / "flipped.msb", weights, meta.model_copy(update={"tta_flips": ["horizontal",
                                                                                                 "vertical"]}))
    plain = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "plain", progress=False)
    flipped = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "tta", progress=False, tta=True)
    assert (plain["tta"], flipped["tta"], plain["tta_passes"], flipped["tta_passes"]) == (False, True, 1, 4)
    assert np.array_equal(flipped["confusion_matrix"], _confusion(Predictor.load(bundle, tta=True), data))
    assert np.array_equal(plain["confusion_matrix"], _confusion(Predictor.load(bundle), data))
    result = CliRunner().invoke(app, ["evaluate", str(bundle), str(data), "--split", "all", "--tta", "-q",
                                      "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert '"tta": true' in (tmp_path / "cli" / "metrics.json").read_text()


@pytest.mark.slow
def test_tta_with_a_predictor_in_memory_is_refused(tmp_path):
    bundle, data = shapes_model()
    with pytest.raises(MasksmithError, match="tta"):
        masksmith.evaluate(Predictor.load(bundle), data, split="all", out=tmp_path, tta=True, progress=False)


@pytest.mark.slow
def test_tta_of_a_model_trained_without_flips_is_its_plain_prediction(tmp_path):
    bundle, data = shapes_model()
    assert Predictor.load(bundle).meta.tta_flips == []  # trained with --augment none
    plain = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "plain", progress=False)
    with pytest.warns(UserWarning, match="trained without flips"):
        flipped = masksmith.evaluate(bundle, data, split="all", out=tmp_path / "tta", progress=False, tta=True)
    assert flipped["tta_passes"] == 1
    assert np.array_equal(flipped["confusion_matrix"], plain["confusion_matrix"])


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return untrained_bundle(tmp_path / "model.msb")


@pytest.mark.slow
def test_an_all_ignore_image_is_left_out_of_the_per_image_mean(tmp_path, bundle):
    from masksmith.evaluation.metrics import mean_image_score, per_image_dice
    from masksmith.evaluation.scoring import evaluate

    everything_ignored = np.full((4, 4), 255, np.uint8)
    assert np.isnan(per_image_dice(np.ones((4, 4), np.uint8), everything_ignored, 3, ignore_index=255))
    assert mean_image_score([0.25, float("nan"), None, 0.75]) == (0.5, 2)

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    write_photos(root / "images", ["a.png", "b.png", "c.png"])
    (root / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 3, (24, 32), dtype=np.uint8)).save(root / "masks" / f"{name}.png")
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(root / "masks" / "c.png")
    result = evaluate(bundle, root, split="all", out=tmp_path / "eval", progress=False)
    dice = {row["name"]: row["dice"] for row in result["per_image"]}
    assert dice["c"] is None
    assert result["image_dice"] == pytest.approx((dice["a"] + dice["b"]) / 2)
    assert result["image_dice_left_out"] == 1
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["image_dice_left_out"] == 1
    assert "| image_dice_left_out | 1 |" in (tmp_path / "eval" / "report.md").read_text()


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> Path:
    return tiny_trained_bundle(tmp_path_factory.mktemp("limits"))


@pytest.mark.slow
def test_evaluate_refuses_an_image_over_the_limit_by_name(trained_bundle, tmp_path, monkeypatch):
    data = make_shapes_dataset(tmp_path / "data", count=3)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(data / "images" / "big.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(data / "masks" / "big.png")
    monkeypatch.setenv(ENV_VAR, "5000")
    # Listed and gone past, as predict does; the other pairs are scored.
    result = masksmith.evaluate(trained_bundle, data, split="all", out=tmp_path / "eval", progress=False)
    assert result["images"] == 3 and [row["name"] for row in result["failed"]] == ["big"]
    assert re.search(r"images/big\.png: image refused as a possible decompression bomb: 80x80",
                     result["failed"][0]["reason"])


@pytest.mark.slow
def test_evaluate_gallery_of_a_10000x16_strip_stays_small(trained_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSMITH_MAX_ASPECT", "1000")  # 625:1 is over the default work budget's 100:1
    data = tmp_path / "strip"
    rng = np.random.default_rng(0)
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 10000, 3), dtype=np.uint8)).save(data / "images" / "w.png")
    Image.fromarray(rng.integers(0, 3, (16, 10000), dtype=np.uint8)).save(data / "masks" / "w.png")
    result = masksmith.evaluate(trained_bundle, data, split="all", out=tmp_path / "eval", progress=False)
    assert result["images"] == 1
    with Image.open(tmp_path / "eval" / "gallery.png") as gallery:
        width, height = gallery.size
    # Four tiles of at most 2 x 256 pixels wide, plus padding (it was 640025 pixels wide).
    assert width <= 4 * (512 + 8) + 8 and height < 1000


def test_evaluate_reads_and_predicts_each_image_once(trained_bundle, tmp_path, monkeypatch):
    # The gallery keeps its best and worst images as they pass instead of reading and predicting them again.
    data = make_shapes_dataset(tmp_path / "data", count=9)
    predictor = Predictor.load(trained_bundle)
    calls: dict[str, list[str]] = {"to_array": [], "predict": []}
    for name in calls:
        method = getattr(predictor, name)

        def counted(image, *args, _method=method, _name=name, **kwargs):
            calls[_name].append(str(image) if _name == "to_array" else "")
            return _method(image, *args, **kwargs)

        monkeypatch.setattr(predictor, name, counted)
    result = masksmith.evaluate(predictor, data, split="all", out=tmp_path / "eval", progress=False)
    assert result["images"] == 9
    assert len(calls["predict"]) == 9 and sorted(calls["to_array"]) == sorted(set(calls["to_array"]))
    assert (tmp_path / "eval" / "gallery.png").is_file()


@pytest.mark.parametrize("seed", range(5))
def test_gallery_picker_keeps_the_best_and_worst_in_the_order_of_a_full_sort(seed):
    from masksmith.evaluation.scoring import GalleryPicker

    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 12))
    dice = [None if rng.random() < 0.2 else float(rng.integers(0, 4)) / 4 for _ in range(count)]  # ties, gaps
    picker = GalleryPicker(each=3)
    for index, value in enumerate(dice):
        pixel = np.full((1, 1), index, np.uint8)
        picker.add(index, value, f"n{index}", pixel, pixel, pixel)
    # The gallery of every image sorted at the end: worst 3 ascending, best 3 descending, none twice.
    order = sorted((i for i in range(count) if dice[i] is not None), key=lambda i: dice[i])
    worst = order[:3]
    best = [i for i in reversed(order[-3:]) if i not in worst]
    assert [int(row["image"][0, 0]) for row in picker.rows()] == best + worst
    assert [row["caption"].split(":")[0] for row in picker.rows()] == ["best"] * len(best) + ["worst"] * len(worst)
