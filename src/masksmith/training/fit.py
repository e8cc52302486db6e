"""Stage 4, fit: data loaders, the Lightning Trainer's fit (fresh or resumed), and the best weights back
into the network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from masksmith.augment import build_augmentation
from masksmith.checkpoints import load_checkpoint
from masksmith.config import TrainConfig
from masksmith.data.dataset import SegmentationDataset
from masksmith.engine import EpochHistory, SegmentationModule, build_trainer, default_num_workers
from masksmith.errors import ConfigError
from masksmith.training.prepare import PreparedData


@dataclass
class FitOutcome:
    """What fitting left: the per-epoch rows, the best score, and how many epochs ran."""

    rows: list[dict[str, float]]
    best_score: float | None
    epochs_run: int


def data_loaders(config: TrainConfig, data: PreparedData) -> tuple[DataLoader, DataLoader]:
    """Shuffled, augmented training batches and plain validation batches, seeded."""
    common = dict(size=config.size, channels=data.channels, mean=data.mean, std=data.std, encoding=data.encoding,
                  num_classes=data.num_classes, ignore_index=config.ignore_index)
    train_set = SegmentationDataset(
        data.train, resize=config.resize,
        augment=build_augmentation(config.augment, ignore_index=config.ignore_index, channels=data.channels),
        **common)
    val_set = SegmentationDataset(data.val, resize="resize" if config.resize == "resize" else "center_crop",
                                  augment=None, **common)
    workers = default_num_workers() if config.num_workers is None else config.num_workers
    generator = torch.Generator().manual_seed(config.seed)
    # drop_last avoids a 1-image final batch, which breaks BatchNorm statistics.
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, num_workers=workers,
                              generator=generator, drop_last=len(train_set) > config.batch_size,
                              persistent_workers=workers > 0)
    val_loader = DataLoader(val_set, batch_size=config.batch_size, shuffle=False, num_workers=workers,
                            persistent_workers=workers > 0)
    return train_loader, val_loader


def fit(network: torch.nn.Module, config: TrainConfig, data: PreparedData, run_dir: Path, *, resume: bool,
        callbacks: Sequence[Callback] = ()) -> FitOutcome:
    """Train `network` in place; afterwards it holds the best checkpoint's weights (if one was saved)."""
    module = SegmentationModule(network, config, data.num_classes)
    train_loader, val_loader = data_loaders(config, data)
    history = EpochHistory(run_dir, monitor=config.monitor)
    if resume:
        history.load_existing()
    trainer, checkpoint = build_trainer(config, run_dir, history, extra_callbacks=callbacks)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"{last}: no checkpoint to resume from")
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    if checkpoint.best_model_path:
        # Weights-only and inside checkpoints/: a resumed run folder may not be the user's own.
        state = load_checkpoint(checkpoint.best_model_path, run_dir / "checkpoints")["state_dict"]
        network.load_state_dict({k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")})
    best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    return FitOutcome(history.rows, best_score, trainer.current_epoch)
