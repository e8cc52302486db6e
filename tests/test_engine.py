"""Training options that change how Lightning runs: optimizers, schedules, early stopping, precision."""

from __future__ import annotations

import pytest
import torch

import masksmith
from masksmith.config import TrainConfig
from masksmith.engine import SegmentationModule
from masksmith.errors import ConfigError
from masksmith.models import build_model
from tests.helpers import make_shapes_dataset

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
                             channels_last="on", amp="on", grad_clip=1.0, model_options=TINY_UNET,
                             augment=[{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomBrightnessContrast"}],
                             out=str(tmp_path / "run"), quiet=True)
    assert "- name: HorizontalFlip" in (result.run_dir / "config.yaml").read_text()
    assert masksmith.load(result.bundle).predict(data / "images" / "s00.jpg").shape == (40, 56)


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
