"""k-fold cross-validation: seeded recorded folds, one run per fold, out-of-fold scores, the run folder as an
ensemble for predict and evaluate, resume, and hostile inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import masksmith
from masksmith.cli.app import app
from masksmith.data.discover import discover
from masksmith.errors import BundleError, ConfigError, DataError
from masksmith.evaluation.metrics import ConfusionMatrix
from masksmith.inference.ensemble import EnsemblePredictor, load_models
from masksmith.inference.predictor import Predictor
from masksmith.training.cross_validation import cv_pool, make_folds, read_splits
from tests.helpers import make_shapes_dataset

TINY = dict(epochs=1, size=32, batch_size=4, model_options={"base_channels": 4, "depth": 2}, auto=False,
            early_stopping=0, quiet=True)


def shapes_with_test_split(root: Path, train: int = 6, test: int = 2) -> Path:
    """train/{images,masks} and test/{images,masks} of the shapes data (the test images are named t..)."""
    make_shapes_dataset(root / "train", count=train, size=(32, 36))
    make_shapes_dataset(root / "scratch", count=test, size=(32, 36), seed=1)
    for role in ("images", "masks"):
        (root / "test" / role).mkdir(parents=True)
        for path in sorted((root / "scratch" / role).iterdir()):
            path.rename(root / "test" / role / f"t{path.name}")
    shutil.move(str(root / "train" / "classes.txt"), root / "classes.txt")
    shutil.rmtree(root / "scratch")
    return root


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset with a test split, a finished 3-fold run on its 6 train images): trained once for the module."""
    root = tmp_path_factory.mktemp("cv")
    data = shapes_with_test_split(root / "data")
    result = masksmith.train(data, folds=3, out=str(root / "run"), **TINY)
    assert result.bundle == root / "run"
    return data, root / "run"


def names_of(data: Path, split: str) -> list[str]:
    return sorted(p.stem for p in (data / split / "images").iterdir())


def test_folds_cover_every_image_once_and_depend_on_the_seed_only():
    names = [f"img{i:02d}" for i in range(11)]
    folds = make_folds(names, 3, seed=7)
    assert sorted(n for fold in folds for n in fold) == names
    assert sorted(len(fold) for fold in folds) == [3, 4, 4]
    assert make_folds(list(reversed(names)), 3, seed=7) == folds  # the caller's order does not matter
    assert make_folds(names, 3, seed=8) != folds
    leave_one_out = make_folds(names, 11, seed=0)
    assert all(len(fold) == 1 for fold in leave_one_out) and sorted(sum(leave_one_out, [])) == names


@pytest.mark.slow
def test_cv_run_writes_folds_bundles_splits_and_a_summary(cv_run):
    data, run = cv_run
    splits = json.loads((run / "splits.json").read_text())
    val = [entry["val"] for entry in splits["splits"]]
    assert sorted(n for fold in val for n in fold) == names_of(data, "train")  # each once, the test never
    assert splits["left_out"] == {"test": 2} and splits["pooled"] == ["train"]
    for fold, names in enumerate(val):
        meta = Predictor.load(run / f"fold_{fold}" / "model.msb").meta
        assert meta.split["kind"] == "fold" and meta.split["fold"] == fold and meta.split["val"] == names
        assert sorted(splits["splits"][fold]["train"]) == sorted(set(names_of(data, "train")) - set(names))
        assert json.loads((run / f"fold_{fold}" / "split.json").read_text())["train"] == splits["splits"][fold]["train"]
    summary = json.loads((run / "cv_summary.json").read_text())
    assert summary["members"] == [f"fold_{k}/model.msb" for k in range(3)] and summary["images"] == 6
    table = (run / "cv_summary.md").read_text()
    assert "| iou red box |" in table and "pooled out-of-fold" in table


@pytest.mark.slow
def test_pooled_scores_equal_a_confusion_matrix_recomputed_from_the_fold_models(cv_run):
    data, run = cv_run
    splits = json.loads((run / "splits.json").read_text())["splits"]
    summary = json.loads((run / "cv_summary.json").read_text())
    pooled = ConfusionMatrix(3, 255)
    per_fold_miou = []
    for fold, entry in enumerate(splits):
        predictor = Predictor.load(run / f"fold_{fold}" / "model.msb")
        matrix = ConfusionMatrix(3, 255)
        for name in entry["val"]:
            truth = np.asarray(Image.open(data / "train" / "masks" / f"{name}.png"))
            matrix.update(predictor.predict(data / "train" / "images" / f"{name}.jpg"), truth)
        assert summary["per_fold"][fold]["confusion_matrix"] == matrix.matrix.tolist()
        per_fold_miou.append(matrix.compute()["miou"])
        pooled.merge(matrix)
    assert summary["pooled"]["confusion_matrix"] == pooled.matrix.tolist()
    expected = pooled.compute(class_names=["background", "red box", "blue box"])
    assert summary["pooled"]["miou"] == pytest.approx(expected["miou"])
    for row, entry in zip(expected["per_class"], summary["per_class"]):
        assert entry["dice"]["pooled"] == pytest.approx(row["dice"], nan_ok=True)
    assert summary["miou"]["mean"] == pytest.approx(np.mean(per_fold_miou))
    assert summary["miou"]["std"] == pytest.approx(np.std(per_fold_miou, ddof=1))


@pytest.mark.slow
def test_the_run_folder_is_the_fold_ensemble_for_predict_and_evaluate(cv_run, tmp_path):
    data, run = cv_run
    ensemble = load_models(run, backend="auto")  # the backend the commands run by default
    assert isinstance(ensemble, EnsemblePredictor) and len(ensemble) == 3
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(run), str(data / "test" / "images"), "--out", str(tmp_path / "p"), "-q"])
    assert result.exit_code == 0, result.output
    for path in sorted((data / "test" / "images").iterdir()):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / f"{path.stem}.png")), ensemble.predict(path))
    result = runner.invoke(app, ["evaluate", str(run), str(data), "--split", "test", "--out", str(tmp_path / "e"), "-q"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["split"] == "test"
    # A fold bundle alone evaluates on its own validation images (recorded in the bundle), not a folder split.
    fold = masksmith.evaluate(run / "fold_1" / "model.msb", data, out=tmp_path / "f1", progress=False)
    summary = json.loads((run / "cv_summary.json").read_text())
    assert fold["confusion_matrix"] == summary["per_fold"][1]["confusion_matrix"]


@pytest.mark.slow
def test_resume_reuses_the_recorded_folds_and_keeps_finished_folds(cv_run, tmp_path):
    data, run = cv_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    kept = (copy / "fold_0" / "model.msb").stat().st_mtime_ns
    shutil.rmtree(copy / "fold_2")  # as if killed before fold 2 started
    (copy / "cv_summary.json").unlink()
    result = masksmith.train(resume=copy)
    assert (copy / "fold_0" / "model.msb").stat().st_mtime_ns == kept
    recorded = json.loads((copy / "splits.json").read_text())["splits"][2]
    assert Predictor.load(copy / "fold_2" / "model.msb").meta.split["val"] == recorded["val"]
    assert result.summary["images"] == 6 and (copy / "cv_summary.json").is_file()
    with pytest.raises(ConfigError, match=r"fold_1: a fold of the cross-validation run .*--resume"):
        masksmith.train(resume=copy / "fold_1")
    with pytest.raises(ConfigError, match="already holds a run"):
        masksmith.train(data, folds=3, out=str(copy), **TINY)


def test_hostile_fold_counts_are_refused_before_training(tmp_path):
    data = shapes_with_test_split(tmp_path / "data", train=3, test=1)
    with pytest.raises(ConfigError, match="folds: Input should be greater than or equal to 2"):
        masksmith.train(data, folds=1, out=str(tmp_path / "one"), **TINY)
    result = CliRunner().invoke(app, ["train", str(data), "--folds", "1", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "folds" in result.output
    # 4 folds of 3 train images (the test image is not the CV's to use)
    with pytest.raises(DataError, match="4 folds need at least 4 images .* found 3"):
        masksmith.train(data, folds=4, out=str(tmp_path / "four"), **TINY)
    assert not (tmp_path / "four" / "fold_0").exists()
    only_test = tmp_path / "only_test"
    shutil.copytree(data / "test", only_test / "test")
    with pytest.raises(DataError, match="no train images to cross-validate"):
        masksmith.train(only_test, folds=2, out=str(tmp_path / "t"), **TINY)


def test_damaged_splits_files_and_changed_data_are_refused(tmp_path):
    pool = ["a", "b", "c", "d"]
    good = {"folds": 2, "splits": [{"train": ["c", "d"], "val": ["a", "b"]}, {"train": ["a", "b"], "val": ["c", "d"]}]}
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(good))
    assert read_splits(path, pool) == [["a", "b"], ["c", "d"]]
    for damaged, message in (
            ("{oops", "unreadable splits file"), ("[]", "not a splits file"),
            (json.dumps({"splits": [{"train": [], "val": ["a"]}]}), "not a splits file"),
            (json.dumps({"splits": [{"train": ["c"], "val": ["a", "b"]}, {"train": ["b"], "val": ["b", "c"]}]}),
             "'b' is in 2 validation folds"),
            (json.dumps({"splits": [{"train": ["a"], "val": ["a", "b"]}, {"train": ["a", "b"], "val": ["c", "d"]}]}),
             "fold 0's train list"),
            (json.dumps({"splits": [{"train": [1], "val": ["a"]}, {"train": ["a"], "val": [2]}]}), "not a splits file")):
        path.write_text(damaged)
        with pytest.raises(ConfigError, match=f"splits.json: .*{message}"):
            read_splits(path, pool)
    path.write_text(json.dumps(good))
    with pytest.raises(DataError, match="the data changed .* gone \\(first: d\\)"):
        read_splits(path, ["a", "b", "c"])
    with pytest.raises(DataError, match="the data changed .* new \\(first: e\\)"):
        read_splits(path, [*pool, "e"])


def test_duplicate_names_across_train_and_val_folders_are_refused(tmp_path):
    for split in ("train", "val"):
        make_shapes_dataset(tmp_path / "data" / split, count=2, size=(24, 24))
    with pytest.raises(DataError, match="share the name 's00'"):
        cv_pool(str(tmp_path / "data"), discover(tmp_path / "data"))


@pytest.mark.slow
def test_a_corrupt_fold_bundle_is_named(cv_run, tmp_path):
    data, run = cv_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    bundle = copy / "fold_1" / "model.msb"
    bundle.write_bytes(bundle.read_bytes()[:300])
    with pytest.raises(BundleError, match=r"fold_1/model\.msb"):
        load_models(copy)
    result = CliRunner().invoke(app, ["predict", str(copy), str(data / "test" / "images"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "fold_1/model.msb" in result.output.replace("\n", "")
    # A resumed run rescoring the folds says which fold's bundle it could not read.
    with pytest.raises(DataError, match=r"fold 1: .*fold_1/model\.msb"):
        masksmith.train(resume=copy)
