"""--keep: model.msb gets the best monitored epoch's weights (the default) or the last epoch's."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

import masksmith
from masksmith.bundle import load_bundle
from masksmith.cli.app import app
from masksmith.training.checkpoints import load_checkpoint, network_weights
from tests.helpers import make_shapes_dataset

TINY_UNET = {"base_channels": 8, "depth": 3}
MONITOR = "val_pixel_accuracy"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same seeded run twice, keeping the best and the last epoch. A learning rate far too high leaves the
    network predicting background everywhere from the first epoch on: every epoch scores the same pixel
    accuracy, a score that only a strictly better epoch replaces, so the best epoch is the first."""
    folder = tmp_path_factory.mktemp("keep")
    data = make_shapes_dataset(folder / "shapes", count=6)
    common = dict(classes=str(data / "classes.txt"), size=32, epochs=3, batch_size=2, model_options=TINY_UNET,
                  early_stopping=0, monitor=MONITOR, lr=2.0, scheduler="none", auto=False, num_workers=0,
                  quiet=True)
    return {keep: masksmith.train(data, keep=keep, out=str(folder / keep), **common) for keep in ("best", "last")}


def _bundle_equals_checkpoint(run, name: str) -> bool:
    saved = load_checkpoint(run.run_dir / "checkpoints" / f"{name}.ckpt", run.run_dir / "checkpoints")
    expected = network_weights(saved["state_dict"])
    _, weights = load_bundle(run.bundle)
    return set(weights) == set(expected) and all(torch.equal(weights[k], expected[k]) for k in expected)


def _column(run, name: str) -> list[float]:
    """One metric of every epoch, from the run's metrics.csv."""
    with open(run.run_dir / "metrics.csv", newline="") as handle:
        return [float(row[name]) for row in csv.DictReader(handle)]


def test_the_two_runs_keep_different_epochs(runs):
    scores = _column(runs["best"], MONITOR)
    assert scores == _column(runs["last"], MONITOR)  # the same run up to the choice
    assert runs["best"].best_epoch == scores.index(max(scores)) != len(scores) - 1


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_bundle_holds_the_kept_checkpoint(runs, keep):
    run = runs[keep]
    other = "best" if keep == "last" else "last"
    assert _bundle_equals_checkpoint(run, keep) and not _bundle_equals_checkpoint(run, other)
    results = json.loads((run.run_dir / "results.json").read_text())
    scores = _column(run, MONITOR)
    kept = len(scores) - 1 if keep == "last" else scores.index(max(scores))
    assert results["kept"] == keep and results["best_epoch"] == run.best_epoch == kept
    # metrics.csv keeps 6 significant digits: rounding alone differs by up to 5e-6 of the value.
    assert results["best_score"] == pytest.approx(scores[kept], rel=1e-5)
    assert results["best_epoch_metrics"]["val_loss"] == pytest.approx(_column(run, "val_loss")[kept], rel=1e-5)


@pytest.mark.parametrize("value", ["first", "", "LAST"])
def test_an_unknown_keep_is_a_one_line_error_naming_the_option(value, tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--keep", value])
    assert result.exit_code != 0
    assert "keep: Input should be 'best' or 'last'" in result.output
    assert not any(tmp_path.iterdir())  # nothing written
