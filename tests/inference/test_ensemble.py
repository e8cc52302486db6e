"""Ensembles: probabilities averaged over members, members that must agree, and the CLI's MODEL... INPUT... rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.cli.app import app
from masksmith.errors import BundleError, ConfigError, DataError
from masksmith.evaluation.metrics import ConfusionMatrix
from masksmith.evaluation.scoring import evaluate
from masksmith.inference.ensemble import EnsemblePredictor, expand_models, load_models, split_models
from masksmith.inference.predictor import Predictor
from masksmith.models import build_model
from tests.helpers import make_shapes_dataset

NAMES = ["background", "red box", "blue box"]
COLORS = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]


def make_bundle(path: Path, seed: int, *, channels: int = 3, names: list[str] = NAMES, size: int = 32,
                resize: str = "resize", head: int | None = None, split: dict | None = None) -> Path:
    """An untrained U-Net bundle (different seeds: different weights, so members disagree)."""
    torch.manual_seed(seed)
    out = head or len(names)
    network = build_model("unet", channels, out, base_channels=4, depth=2)
    meta = BundleMeta(model="unet", model_options={"base_channels": 4, "depth": 2}, in_channels=channels,
                      out_channels=out, class_names=names, colors=COLORS[:len(names)], size=size, resize=resize,
                      mean=[0.5] * channels, std=[0.25] * channels, mask_encoding={"kind": "index"},
                      split=split or {})
    return save_bundle(path, network.state_dict(), meta)


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    # Different input sizes and resize modes: each member preprocesses for itself before the average.
    return [make_bundle(tmp_path / "a.msb", 0), make_bundle(tmp_path / "b.msb", 1, size=48),
            make_bundle(tmp_path / "c.msb", 2, resize="random_crop")]


def images(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (30 + 7 * i, 41, 3), dtype=np.uint8) for i in range(count)]


def test_ensemble_probabilities_are_the_mean_of_its_members(members):
    predictors = [Predictor.load(path) for path in members]
    ensemble = EnsemblePredictor(predictors, [str(p) for p in members])
    arrays = images()
    averaged = ensemble.probabilities(arrays)
    each = [predictor.probabilities(arrays) for predictor in predictors]
    for index, image in enumerate(arrays):
        expected = torch.stack([probabilities[index] for probabilities in each]).mean(dim=0)
        assert averaged[index].shape == (3, *image.shape[:2])
        torch.testing.assert_close(averaged[index], expected, atol=1e-6, rtol=0)
        # The members really disagree, so the mean is not any one of them.
        assert not torch.allclose(each[0][index], each[1][index], atol=1e-3)
        assert np.array_equal(ensemble.predict(image), ensemble.decide(expected))


def test_binary_sigmoid_and_softmax_members_average_as_probabilities(tmp_path):
    names = ["background", "thing"]
    softmax = make_bundle(tmp_path / "softmax.msb", 0, names=names)
    sigmoid = make_bundle(tmp_path / "sigmoid.msb", 1, names=names, head=1)
    ensemble = load_models([softmax, sigmoid])
    image = images(1)[0]
    expected = (Predictor.load(softmax).probabilities([image])[0] + Predictor.load(sigmoid).probabilities([image])[0]) / 2
    torch.testing.assert_close(ensemble.probabilities([image])[0], expected, atol=1e-6, rtol=0)
    assert np.array_equal(ensemble.predict(image), (expected[1] > 0.5).numpy().astype(np.uint8))


def test_members_with_other_classes_or_channels_are_refused_by_name(tmp_path, members):
    other_classes = make_bundle(tmp_path / "two_classes.msb", 5, names=["background", "thing"])
    with pytest.raises(ConfigError, match=r"two_classes\.msb: its classes .* differ from those of .*a\.msb"):
        load_models([members[0], other_classes])
    renamed = make_bundle(tmp_path / "renamed.msb", 5, names=["background", "red", "blue"])
    with pytest.raises(ConfigError, match=r"renamed\.msb: its classes"):
        load_models([members[0], members[1], renamed])
    gray = make_bundle(tmp_path / "gray.msb", 6, channels=1)
    with pytest.raises(ConfigError, match=r"gray\.msb: its input channels \(1\)"):
        load_models([members[0], gray])


def test_hostile_model_lists(tmp_path, members):
    corrupt = tmp_path / "corrupt.msb"
    corrupt.write_bytes(members[0].read_bytes()[:200])  # truncated
    with pytest.raises(BundleError, match="corrupt.msb"):
        load_models([members[0], corrupt])
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ConfigError, match="empty_folder: a folder that is neither a run"):
        expand_models([tmp_path / "empty_folder"])
    cv = tmp_path / "cv"
    (cv / "fold_0").mkdir(parents=True)
    (cv / "fold_0" / "model.msb").write_bytes(members[0].read_bytes())
    (cv / "splits.json").write_text(json.dumps({"folds": 2}))
    with pytest.raises(BundleError, match=r"fold_1/model\.msb: missing: .*--resume"):
        expand_models([cv])
    (cv / "splits.json").write_text("{not json")
    with pytest.raises(BundleError, match="do not say how many folds"):
        expand_models([cv])
    with pytest.raises(Exception, match="no model given"):
        load_models([])


def test_split_models_takes_leading_model_files_and_keeps_predict_model_input_compatible(tmp_path, members):
    picture = tmp_path / "x.png"
    Image.fromarray(images(1)[0]).save(picture)
    assert split_models(members[0], [str(picture)]) == ([str(members[0])], [str(picture)])
    assert split_models(members[0], [str(members[1]), str(picture), str(members[2])]) == (
        [str(members[0]), str(members[1])], [str(picture), str(members[2])])
    # A name that is no file is an input (predict then reports it), never silently a model.
    assert split_models(members[0], ["missing.msb", str(picture)])[0] == [str(members[0])]


@pytest.mark.slow
def test_predict_and_evaluate_cli_take_several_models(tmp_path, members):
    data = make_shapes_dataset(tmp_path / "shapes", count=3, size=(32, 40))
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(members[0]), str(members[1]), str(data / "images"),
                                 "--out", str(tmp_path / "pred"), "-q"])
    assert result.exit_code == 0, result.output
    ensemble = load_models(members[:2], backend="auto")  # the commands' default backend
    for path in sorted((data / "images").glob("*.jpg")):
        written = np.asarray(Image.open(tmp_path / "pred" / f"{path.stem}.png"))
        assert np.array_equal(written, ensemble.predict(path))
    result = runner.invoke(app, ["predict", str(members[0]), str(members[1]), "--out", str(tmp_path / "p2")])
    assert result.exit_code == 2 and "no images to predict" in result.output
    result = runner.invoke(app, ["evaluate", str(members[0]), str(members[1]), str(members[2]), str(data),
                                 "--split", "all", "--out", str(tmp_path / "ev"), "-q"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    three = load_models(members, backend="auto")
    confusion = ConfusionMatrix(3, 255)
    for path in sorted((data / "images").glob("*.jpg")):
        confusion.update(three.predict(path), np.asarray(Image.open(data / "masks" / f"{path.stem}.png")))
    assert metrics["confusion_matrix"] == confusion.matrix.tolist()
    assert evaluate(members[:2], data, split="all", out=tmp_path / "ev2", progress=False)["images"] == 3


@pytest.mark.slow
def test_members_trained_on_one_recorded_split_are_evaluated_on_its_validation_images(tmp_path):
    # Two models trained side by side on one seeded split: their ensemble scores the images neither trained on.
    data = make_shapes_dataset(tmp_path / "shapes", count=5, size=(32, 40))
    names = sorted(path.stem for path in (data / "images").iterdir())
    split = {"kind": "random", "seed": 42, "val_fraction": 0.4, "val": names[:2], "train": names[2:]}
    shared = [make_bundle(tmp_path / "a.msb", 0, split=split), make_bundle(tmp_path / "b.msb", 1, split=split)]
    result = evaluate(shared, data, split="val", out=tmp_path / "ev", progress=False)
    assert result["images"] == 2
    assert sorted(row["name"] for row in result["per_image"]) == names[:2]
    trained = evaluate(shared, data, split="train", out=tmp_path / "ev-train", progress=False)
    assert sorted(row["name"] for row in trained["per_image"]) == names[2:]  # the rest of the recorded pool
    # A model trained on other images: without its validation images here, its training images are unknown.
    stranger = make_bundle(tmp_path / "d.msb", 3, split={**split, "val": ["elsewhere"]})
    with pytest.raises(DataError, match="validation images are here"):
        evaluate(stranger, data, split="train", out=tmp_path / "ev-other", progress=False)
    # Another seed's split: no split is the ensemble's own, and val is refused with the way out.
    other = make_bundle(tmp_path / "c.msb", 2, split={**split, "val": names[2:4], "train": names[:2] + names[4:]})
    assert load_models([shared[0], other]).meta.split["kind"] == "ensemble"
    with pytest.raises(DataError, match="--split all"):
        evaluate([shared[0], other], data, split="val", out=tmp_path / "ev2", progress=False)
