"""Checkpoints: --keep gives model.msb the best monitored epoch's weights (the default) or the last epoch's;
resuming stays safe and consistent (weights-only checkpoints, last.ckpt every epoch, a moved run folder, no temp
files after a crash, one training per run folder)."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

import masksmith
from masksmith.bundle import load_bundle
from masksmith.cli.app import app
from masksmith.core.fileio import folder_lock
from masksmith.errors import ConfigError
from masksmith.evaluation.metrics import ConfusionMatrix
from masksmith.training.checkpoints import AtomicCheckpointIO, load_checkpoint, network_weights
from tests.helpers import RecordWeights, make_shapes_dataset, moving_average

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


@pytest.mark.slow
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


TINY = {"base_channels": 4, "depth": 2}


class Payload:
    """Unpickling this creates `marker`: stands in for any code a crafted checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def script_val_dice(monkeypatch, scores):
    """Make the validation epochs report these val_dice values, in order, whatever the network does."""
    values = iter(scores)
    original = ConfusionMatrix.compute

    def compute(self, *args, **kwargs):
        return {**original(self, *args, **kwargs), "mean_dice_no_background": next(values)}

    monkeypatch.setattr(ConfusionMatrix, "compute", compute)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", count=6)


def tiny_train(data: Path, out: Path, epochs: int, **options):
    return masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=epochs, batch_size=2,
                           model_options=TINY, out=str(out), quiet=True, num_workers=0, **options)


def best_state(checkpoint: dict) -> dict:
    """The best-checkpoint callback's state inside a Lightning checkpoint."""
    return next(state for key, state in checkpoint["callbacks"].items()
                if key.startswith("ModelCheckpoint") and state.get("monitor") == "val_dice")


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_even_when_the_score_stopped_improving(shapes, tmp_path, monkeypatch):
    script_val_dice(monkeypatch, [0.9, 0.5, 0.4])
    result = tiny_train(shapes, tmp_path / "run", epochs=3)
    last = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(result.run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert last["epoch"] == 2  # Lightning's save_last had left it at epoch 0, the last improvement
    assert best["epoch"] == 0 and result.best_epoch == 0
    assert float(best_state(last)["best_model_score"]) == pytest.approx(0.9)


@pytest.mark.slow
def test_a_moved_run_folder_resumes_with_its_best_score(shapes, tmp_path, monkeypatch):
    script_val_dice(monkeypatch, [0.9, 0.5, 0.6, 0.7])
    first = tiny_train(shapes, tmp_path / "before", epochs=2)
    moved = tmp_path / "after"
    shutil.move(first.run_dir, moved)
    result = masksmith.train(resume=moved, epochs=4)
    # The resumed epochs (0.6, 0.7) are worse than epoch 0 (0.9): best.ckpt must stay epoch 0's.
    assert result.best_score == pytest.approx(0.9) and result.best_epoch == 0
    saved = json.loads((moved / "results.json").read_text())
    rows = (moved / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    best_row = dict(zip(header, rows[1 + saved["best_epoch"]].split(",")))
    assert float(best_row["val_dice"]) == pytest.approx(saved["best_score"], rel=1e-5)
    assert saved["best_epoch_metrics"]["val_dice"] == pytest.approx(saved["best_score"], rel=1e-5)
    best = torch.load(moved / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == saved["best_epoch"]
    _, weights = load_bundle(result.bundle)  # the bundle holds the best epoch's weights
    for name, tensor in weights.items():
        assert torch.equal(tensor, best["state_dict"][f"network.{name}"]), name


@pytest.mark.slow
def test_a_resumed_run_continues_its_weight_average(shapes, tmp_path):
    decay, recorder = 0.5, RecordWeights()
    first = tiny_train(shapes, tmp_path / "run", epochs=1, ema_decay=decay, lr=0.05)
    saved = torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # The checkpoint holds the average as its weights and the raw ones beside them, for the resumed steps.
    assert any(not torch.equal(saved["state_dict"][k], saved["current_model_state"][k]) for k in saved["state_dict"])
    average = network_weights(saved["state_dict"])
    masksmith.train(resume=first.run_dir, epochs=2, callbacks=[recorder])
    assert recorder.steps
    # Restored, the average goes on from the saved one (a fresh start would copy the first resumed step).
    expected = moving_average(average, recorder.steps, decay)
    resumed = torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1
    for key, value in expected.items():
        torch.testing.assert_close(resumed["state_dict"][f"network.{key}"], value, rtol=1e-4, atol=1e-6)


def test_the_payload_runs_code_when_unpickled(tmp_path):
    """The test payload is live: a full unpickle creates its marker file (so its absence below means something)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_resume_refuses_a_last_checkpoint_holding_objects(shapes, tmp_path):
    run = tiny_train(shapes, tmp_path / "run", epochs=1).run_dir
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    marker = tmp_path / "pwned"
    torch.save({**checkpoint, "extra": Payload(marker)}, last)
    with pytest.raises(ConfigError, match=r"last\.ckpt: the checkpoint holds pickled Python objects"):
        masksmith.train(resume=run, epochs=2)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["best.ckpt", "outside"])
def test_resume_refuses_a_best_checkpoint_holding_objects(shapes, tmp_path, where):
    run = tiny_train(shapes, tmp_path / "run", epochs=1).run_dir
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    marker = tmp_path / "pwned"
    crafted = run / "checkpoints" / "best.ckpt" if where == "best.ckpt" else tmp_path / "elsewhere" / "evil.ckpt"
    crafted.parent.mkdir(exist_ok=True)
    torch.save({"state_dict": {}, "extra": Payload(marker)}, crafted)
    state = best_state(checkpoint)
    # An unbeatable score, so no resumed epoch replaces the crafted best checkpoint before it is loaded.
    state.update(best_model_path=str(crafted), best_model_score=torch.tensor(2.0), kth_best_model_path=str(crafted),
                 best_k_models={str(crafted): torch.tensor(2.0)})
    torch.save(checkpoint, last)  # tensors and plain values: loads weights-only
    expected = "pickled Python objects" if where == "best.ckpt" else r"checkpoints/evil\.ckpt: no such checkpoint"
    with pytest.raises(ConfigError, match=expected):
        masksmith.train(resume=run, epochs=2)
    assert not marker.exists()


def test_checkpoints_outside_the_checkpoint_folder_are_not_read(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    outside = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, outside)
    (folder / "linked.ckpt").symlink_to(outside)
    for path in (outside, folder / "linked.ckpt", folder / ".." / ".." / "other.ckpt"):
        with pytest.raises(ConfigError, match="outside the run's checkpoint folder"):
            load_checkpoint(path, folder)
    with pytest.raises(ConfigError, match="outside the run's checkpoint folder"):
        AtomicCheckpointIO(folder).load_checkpoint(str(outside))


def temp_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.tmp"))


def test_resume_removes_the_temp_files_a_killed_run_left(shapes, tmp_path):
    run = tiny_train(shapes, tmp_path / "run", epochs=1).run_dir
    # What SIGKILL during a write leaves: atomic_path's temp files, never renamed.
    (run / ".curves.k2j4x9ab.png.tmp").write_bytes(b"")
    (run / "checkpoints" / ".last.abc_1234.ckpt.tmp").write_bytes(b"half a checkpoint")
    (run / ".notes.tmp").write_text("someone else's")  # not a name masksmith gives: left alone
    masksmith.train(resume=run, epochs=2)
    assert temp_files(run) == [run / ".notes.tmp"]


class FailMidEpoch(Callback):
    """Raise in the middle of the second epoch, as a crash would."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
        if trainer.current_epoch == 1 and batch_index == 0:
            raise RuntimeError("simulated crash")


def test_a_crash_mid_epoch_leaves_no_temp_files_and_a_whole_last_checkpoint(shapes, tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_train(shapes, tmp_path / "run", epochs=3, callbacks=[FailMidEpoch()])
    run = tmp_path / "run"
    assert temp_files(run) == []
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_ctrl_c_while_writing_a_checkpoint_keeps_the_previous_one(shapes, tmp_path, monkeypatch):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    original = TorchCheckpointIO.save_checkpoint

    def interrupted(self, checkpoint, path, storage_options=None):
        if checkpoint["epoch"] == 1:
            Path(path).write_bytes(b"the first bytes of a checkpoint")
            raise KeyboardInterrupt
        original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", interrupted)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl+C into a clean exit(1)
            tiny_train(shapes, tmp_path / "run", epochs=3)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl+C after the first
    run = tmp_path / "run"
    assert temp_files(run) == []
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


def test_a_second_training_into_a_locked_run_folder_fails_at_once(shapes, tmp_path):
    run = tmp_path / "run"
    with folder_lock(run):
        with pytest.raises(ConfigError, match=rf"{run}: in use by another"):
            tiny_train(shapes, run, epochs=1)
        # Refused before reading any data: the folder holds nothing but the lock.
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    tiny_train(shapes, run, epochs=1)  # free again once the holder is done
    with folder_lock(run):
        with pytest.raises(ConfigError, match="in use by another"):
            masksmith.train(resume=run, epochs=2)
