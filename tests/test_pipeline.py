"""The user's path through the Python API: train → evaluate → predict, on real and on synthetic data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import masksmith
from masksmith.bundle import read_meta
from masksmith.errors import ConfigError, DataError
from masksmith.inference.predictor import Predictor
from masksmith.models import build_model
from tests.helpers import make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
MEMBRANE = REPO / "examples" / "membrane"
TINY_UNET = {"base_channels": 8, "depth": 3}


@pytest.fixture(scope="module")
def membrane_run(tmp_path_factory):
    """A real (small) training run on the shipped EM-membrane slice."""
    out = tmp_path_factory.mktemp("runs") / "membrane"
    result = masksmith.train(MEMBRANE, foreground=0, size=96, batch_size=4, epochs=12, lr=3e-3,
                             model_options=TINY_UNET, augment="light", early_stopping=0, out=str(out), quiet=True)
    return result


@pytest.mark.slow
def test_training_measurably_learns_the_membranes(membrane_run, tmp_path):
    trained = masksmith.evaluate(membrane_run.bundle, MEMBRANE, out=tmp_path / "trained", progress=False)
    meta = read_meta(membrane_run.bundle)
    torch.manual_seed(0)
    untrained_net = build_model(meta.model, meta.in_channels, meta.out_channels, **meta.model_options)
    untrained = masksmith.evaluate(Predictor(untrained_net, meta), MEMBRANE, out=tmp_path / "untrained", progress=False)
    membrane_dice = trained["per_class"][1]["dice"]
    assert trained["images"] == untrained["images"] == 6  # the recorded 20 % validation split of 30
    assert membrane_dice > 0.55
    assert membrane_dice > (untrained["per_class"][1]["dice"] or 0) + 0.15
    assert trained["pixel_accuracy"] > untrained["pixel_accuracy"]


@pytest.mark.slow
def test_run_folder_holds_everything_needed_to_repeat_and_use_the_run(membrane_run):
    run = membrane_run.run_dir
    for name in ["config.yaml", "split.json", "metrics.csv", "curves.png", "model.msb", "results.json",
                 "train.log", "checkpoints/best.ckpt", "checkpoints/last.ckpt"]:
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and rows[0].startswith("epoch,train_loss,")
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 6 and not set(split["val"]) & set(split["train"])
    meta = read_meta(membrane_run.bundle)
    assert meta.class_names == ["background", "foreground"]
    assert meta.mask_encoding == {"kind": "binary", "foreground": 0}
    assert meta.split["val"] == split["val"]
    results = json.loads((run / "results.json").read_text())
    assert results["best_score"] == pytest.approx(max(float(r.split(",")[2]) for r in rows[1:]), rel=1e-4)


@pytest.mark.slow
def test_prediction_comes_back_at_the_original_size(membrane_run):
    predictor = masksmith.load(membrane_run.bundle)
    image = np.array(Image.open(MEMBRANE / "images" / "3.png"))
    mask = predictor.predict(image)
    assert mask.shape == (512, 512) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    # A path, a PIL image and a cropped array all work; the crop keeps its own odd size.
    assert np.array_equal(predictor.predict(MEMBRANE / "images" / "3.png"), mask)
    assert np.array_equal(predictor.predict(Image.open(MEMBRANE / "images" / "3.png")), mask)
    assert predictor.predict(image[:301, :157]).shape == (301, 157)
    # The threshold moves the binary decision.
    assert predictor.predict(image, threshold=0.05).sum() >= mask.sum() >= predictor.predict(image, threshold=0.95).sum()


@pytest.mark.slow
def test_evaluate_writes_the_report(membrane_run, tmp_path):
    result = masksmith.evaluate(membrane_run.bundle, MEMBRANE, out=tmp_path / "eval", progress=False)
    for name in ["metrics.json", "per_class.csv", "confusion.png", "per_class.png", "gallery.png", "report.md"]:
        assert (tmp_path / "eval" / name).is_file(), name
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["miou"] == pytest.approx(result["miou"])
    matrix = np.array(saved["confusion_matrix"])
    assert matrix.sum() == 6 * 512 * 512  # evaluated at the original resolution
    assert len(saved["per_image"]) == 6
    everything = masksmith.evaluate(membrane_run.bundle, MEMBRANE, split="all", out=tmp_path / "all", progress=False)
    assert everything["images"] == 30


@pytest.mark.slow
def test_resume_continues_the_run(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    first = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2,
                            model_options=TINY_UNET, out=str(tmp_path / "run"), quiet=True)
    second = masksmith.train(resume=first.run_dir, epochs=3)
    rows = (second.run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [0, 1, 2]
    assert "epochs: 3" in (second.run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_max_time_stops_cleanly_and_keeps_a_model(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=8)
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1000, batch_size=2,
                             model_options=TINY_UNET, max_time=0.1, out=str(tmp_path / "run"), quiet=True)
    assert 1 <= result.epochs_run < 1000
    assert result.seconds < 60
    assert masksmith.load(result.bundle).predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)


@pytest.mark.slow
def test_same_seed_same_numbers_on_cpu(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    runs = [masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=2, batch_size=2,
                            model_options=TINY_UNET, out=str(tmp_path / f"run{i}"), quiet=True) for i in range(2)]
    first, second = ((r.run_dir / "metrics.csv").read_text() for r in runs)
    assert first == second


@pytest.mark.slow
def test_multiclass_with_a_sigmoid_free_softmax_head_and_class_names(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=16)
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=48, epochs=15, batch_size=4, lr=5e-3,
                             loss="ce", model_options=TINY_UNET, augment="none", early_stopping=0,
                             out=str(tmp_path / "run"), quiet=True)
    scores = masksmith.evaluate(result.bundle, data, out=tmp_path / "eval", progress=False)
    assert [row["name"] for row in scores["per_class"]] == ["background", "red box", "blue box"]
    assert scores["miou"] > 0.5
    mask = masksmith.load(result.bundle).predict(data / "images" / "s00.jpg")
    assert mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 1, 2}


@pytest.mark.slow
def test_binary_sigmoid_head(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=8)
    for path in (data / "masks").glob("*.png"):  # keep only the red box, as 0/255
        mask = np.array(Image.open(path))
        Image.fromarray(np.where(mask == 1, 255, 0).astype(np.uint8)).save(path)
    (data / "classes.txt").unlink()  # its 3 names no longer apply: train infers a binary dataset
    result = masksmith.train(data, size=32, epochs=2, batch_size=2, binary_head="sigmoid", loss="bce+dice",
                             model_options=TINY_UNET, out=str(tmp_path / "run"), quiet=True)
    meta = read_meta(result.bundle)
    assert meta.out_channels == 1 and meta.class_names == ["background", "foreground"]
    assert set(np.unique(masksmith.load(result.bundle).predict(data / "images" / "s00.jpg"))) <= {0, 1}


def test_crop_training_predicts_whole_images(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6, size=(64, 80))
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, resize="random_crop", epochs=1,
                             batch_size=2, model_options=TINY_UNET, out=str(tmp_path / "run"), quiet=True)
    assert masksmith.load(result.bundle).predict(data / "images" / "s01.jpg").shape == (64, 80)


@pytest.mark.slow
def test_split_folders_are_used_as_given(tmp_path):
    pool = make_shapes_dataset(tmp_path / "pool", count=8)
    for split, names in (("train", range(6)), ("val", range(6, 8))):
        for kind, ext in (("images", "jpg"), ("masks", "png")):
            (tmp_path / "split" / split / kind).mkdir(parents=True)
            for i in names:
                shutil.copy(pool / kind / f"s{i:02d}.{ext}", tmp_path / "split" / split / kind)
    result = masksmith.train(tmp_path / "split", classes=str(pool / "classes.txt"), size=32, epochs=1,
                             batch_size=2, model_options=TINY_UNET, out=str(tmp_path / "run"), quiet=True)
    assert read_meta(result.bundle).split["val"] == ["s06", "s07"]
    assert masksmith.evaluate(result.bundle, tmp_path / "split", progress=False, out=tmp_path / "e")["images"] == 2


def test_bad_training_input_fails_before_training_with_the_file_named(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    bad = np.full((40, 56), 7, np.uint8)
    Image.fromarray(bad).save(data / "masks" / "s03.png")
    with pytest.raises(DataError, match=r"s03\.png.*outside"):
        masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, out=str(tmp_path / "r1"), quiet=True)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "masks" / "s03.png")
    with pytest.raises(DataError, match=r"s03\.png: mask is 10x10 but image s03\.jpg is 56x40"):
        masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, out=str(tmp_path / "r2"), quiet=True)
    (data / "masks" / "s03.png").unlink()
    with pytest.raises(DataError, match="s03"):
        masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, out=str(tmp_path / "r3"), quiet=True)
    with pytest.raises(ConfigError, match="unknown model 'unet3d'; valid names: fcn-lite, "):
        masksmith.train(data, model="unet3d", skip_unpaired=True, classes=str(data / "classes.txt"), size=32,
                        out=str(tmp_path / "r4"), quiet=True)


def test_skip_invalid_trains_on_the_good_pairs_and_lists_the_bad_ones(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=8)
    (data / "masks" / "s02.png").write_text("not a png")
    (data / "images" / "s05.jpg").write_bytes(b"")
    options = dict(classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2, model_options=TINY_UNET,
                   quiet=True)
    with pytest.raises(DataError, match=r"2 problem\(s\)") as refused:
        masksmith.train(data, out=str(tmp_path / "refused"), **options)
    assert "s02.png" in str(refused.value) and "s05.jpg" in str(refused.value)
    with pytest.warns(UserWarning, match="s02.png"):
        result = masksmith.train(data, out=str(tmp_path / "run"), skip_invalid=True, **options)
    split = json.loads((result.run_dir / "split.json").read_text())
    assert "s02" not in split["train"] + split["val"] and "s05" not in split["train"] + split["val"]
