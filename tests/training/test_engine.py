"""Training options that change how Lightning runs: optimizers, schedules, early stopping, precision."""

from __future__ import annotations

import time

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import masksmith
from masksmith.config import TrainConfig
from masksmith.errors import ConfigError
from masksmith.models import build_model
from masksmith.training.engine import SegmentationModule, epochs_within_budget
from tests.helpers import RecordWeights, make_shapes_dataset, moving_average

TINY_UNET = {"base_channels": 8, "depth": 3}

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("scheduler", ["none", "cosine", "poly", "plateau"])
def test_every_optimizer_and_schedule_is_built_as_named(optimizer, scheduler):
    config = TrainConfig(data="d", optimizer=optimizer, scheduler=scheduler, lr=0.01, epochs=10)
    module = SegmentationModule(build_model("fcn-lite", 3, 2, base_channels=4, depth=2), config, 2)
    built = module.configure_optimizers()
    opt = built if scheduler == "none" else built["optimizer"]
    assert type(opt) is OPTIMIZERS[optimizer] and opt.param_groups[0]["lr"] == 0.01
    if scheduler == "none":
        return
    schedule = built["lr_scheduler"]["scheduler"]
    if scheduler == "plateau":
        assert isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
        assert built["lr_scheduler"]["monitor"] == "val_dice"
        return
    for _ in range(5):
        opt.step()
        schedule.step()
    lr = opt.param_groups[0]["lr"]
    expected = 0.01 * (1 - 5 / 10) ** 0.9 if scheduler == "poly" else 0.0001 + (0.01 - 0.0001) * 0.5
    assert lr == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_early_stopping_ends_a_run_that_does_not_improve(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    # A learning rate of ~0 keeps the validation score flat, so patience 2 stops after 3 epochs.
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=50, batch_size=2, lr=1e-12,
                             scheduler="none", early_stopping=2, monitor="val_loss", model_options=TINY_UNET,
                             out=str(tmp_path / "run"), quiet=True)
    assert result.epochs_run <= 4
    assert len((result.run_dir / "metrics.csv").read_text().splitlines()) - 1 == result.epochs_run


def test_channels_last_bf16_gradient_clipping_and_custom_augmentation_train_on_cpu(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2,
                             channels_last="on", precision="bf16-mixed", grad_clip=1.0, model_options=TINY_UNET,
                             augment=[{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomBrightnessContrast"}],
                             out=str(tmp_path / "run"), quiet=True)
    assert "- name: HorizontalFlip" in (result.run_dir / "config.yaml").read_text()
    assert masksmith.load(result.bundle).predict(data / "images" / "s00.jpg").shape == (40, 56)


@pytest.mark.slow
def test_a_finished_run_folder_is_not_overwritten(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    options = dict(classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2, model_options=TINY_UNET,
                   out=str(tmp_path / "run"), quiet=True)
    first = masksmith.train(data, **options)
    before = first.bundle.read_bytes()
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
        masksmith.train(data, **options)
    assert first.bundle.read_bytes() == before


def test_default_run_folders_count_up(tmp_path, monkeypatch):
    from masksmith.training import next_run_dir

    monkeypatch.chdir(tmp_path)
    assert next_run_dir(None) == tmp_path.joinpath("runs/train").relative_to(tmp_path)
    (tmp_path / "runs" / "train").mkdir(parents=True)
    (tmp_path / "runs" / "train2").mkdir()
    assert str(next_run_dir(None)) == "runs/train3"
    assert str(next_run_dir("mine")) == "mine"


@pytest.mark.parametrize("epochs, done, seconds_per_epoch, seconds_left, expected", [
    (300, 10, 20.0, 1200.0, 70),   # the budget ends first: 10 done + 60 that fit
    (300, 10, 20.0, 1219.0, 70),   # a partial epoch does not count
    (50, 10, 20.0, 1200.0, 50),    # --epochs ends first
    (300, 10, 20.0, -5.0, 10),     # out of time: the schedule is over
    (300, 0, 20.0, 0.0, 1),
])
def test_the_schedule_spans_the_epochs_that_fit_in_the_time_left(epochs, done, seconds_per_epoch, seconds_left,
                                                                  expected):
    assert epochs_within_budget(epochs, done, seconds_per_epoch, seconds_left) == expected


class _SlowEpochs(Callback):
    """Makes every epoch last at least `seconds`, so a time budget fits a known number of epochs."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_epoch_start(self, trainer, module):
        time.sleep(self.seconds)


@pytest.mark.slow
def test_a_cosine_schedule_anneals_by_the_time_budget_not_by_an_unreachable_epoch_count(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    # 1000 epochs asked, about 12 fit in 6 seconds (a few on a loaded machine): the rate must still come down
    # to its floor by the end.
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=16, epochs=1000, batch_size=2, lr=0.01,
                             scheduler="cosine", max_time=0.1, early_stopping=0, model="fcn-lite",
                             model_options={"base_channels": 4, "depth": 2}, callbacks=[_SlowEpochs(0.5)],
                             out=str(tmp_path / "run"), quiet=True)
    rates = [float(row.split(",")[-1]) for row in (result.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert 2 <= len(rates) < 1000
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))
    # A 1000-epoch cosine would still be at 99.9% of its peak; fitted to the budget it ends below a third.
    assert rates[-1] < 0.01 / 3


@pytest.mark.slow
def test_the_curves_mark_the_best_epoch_of_the_monitored_metric(tmp_path, monkeypatch):
    import masksmith.visualize

    marked = []
    monkeypatch.setattr(masksmith.visualize, "plot_curves", lambda csv, png, monitor=None: marked.append(monitor))
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    for monitor, expected in [("val_miou", "val_miou"), ("val_loss", None)]:
        marked.clear()
        masksmith.train(data, classes=str(data / "classes.txt"), size=16, epochs=2, batch_size=2, monitor=monitor,
                        model="fcn-lite", model_options={"base_channels": 4, "depth": 2},
                        out=str(tmp_path / monitor), quiet=True)
        assert marked and set(marked) == {expected}  # a loss is plotted with the losses, unmarked


@pytest.mark.slow
def test_output_that_is_not_a_terminal_gets_one_line_per_epoch(tmp_path, capsys):
    from masksmith.config import MONITORED_METRICS
    from masksmith.training.engine import EpochLines, ProgressBar, progress_callback

    assert isinstance(progress_callback(quiet=False, interactive=True), ProgressBar)
    assert isinstance(progress_callback(quiet=False, interactive=False), EpochLines)
    assert progress_callback(quiet=True, interactive=False) is None
    data = make_shapes_dataset(tmp_path / "shapes", count=4)
    # Under pytest stderr is no terminal: the run writes lines, not bar redraws.
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=16, epochs=3, batch_size=2,
                             model="fcn-lite", model_options={"base_channels": 4, "depth": 2}, early_stopping=0,
                             auto=False, out=str(tmp_path / "run"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("train_loss" in line and "val_dice" in line and line.endswith(" s") for line in lines)
    # No epoch or validation bar redraws (Lightning's bars say "Epoch 0:" and "Validation"); the data check's
    # one-off bar (validate_samples) is not the epoch loop's.
    assert "Epoch " not in err and "Validation" not in err
    # Every metric `monitor` may name is one the trainer logs.
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(MONITORED_METRICS) <= set(header)


@pytest.mark.slow
def test_ema_decay_puts_the_moving_average_of_the_weights_in_the_bundle(tmp_path):
    from masksmith.bundle import load_bundle

    data = make_shapes_dataset(tmp_path / "shapes", count=8)
    recorder, decay = RecordWeights(), 0.5
    result = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=1, batch_size=2, lr=0.05,
                             ema_decay=decay, early_stopping=0, model_options=TINY_UNET, callbacks=[recorder],
                             out=str(tmp_path / "run"), quiet=True)
    assert len(recorder.steps) >= 3
    # AveragedModel's first update copies the weights; each later one moves the average by (1 - decay).
    expected = moving_average(recorder.steps[0], recorder.steps[1:], decay)
    _, saved = load_bundle(result.bundle)
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=1e-4, atol=1e-6)
    # ...not the weights of the last step, which a run without the average would have kept; and the
    # BatchNorm statistics are the last step's (averaged ones lag the weights).
    last = recorder.steps[-1]
    assert max((saved[k] - last[k]).abs().max().item() for k in expected) > 1e-3
    statistics = [k for k in last if k not in expected]
    assert any(k.endswith("running_mean") for k in statistics)
    assert all(torch.equal(saved[k], last[k]) for k in statistics)
    assert "ema_decay: 0.5" in (result.run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_ema_decay_outside_zero_to_one_is_refused(decay):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ema_decay"):
        TrainConfig(data="d", ema_decay=decay)
