"""Stage 4, fit: data loaders, the Lightning Trainer's fit (fresh or resumed), and the best weights back
into the network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler

from masksmith.config import TrainConfig
from masksmith.data.sizes import resizes_whole_image
from masksmith.errors import ConfigError
from masksmith.training.augment import build_augmentation
from masksmith.training.checkpoints import load_checkpoint, network_weights
from masksmith.training.dataset import SegmentationDataset
from masksmith.training.engine import EpochHistory, SegmentationModule, build_trainer, default_num_workers
from masksmith.training.parallel import Launch, peer_failure, spawns
from masksmith.training.prepare import PreparedData
from masksmith.training.sampling import repeat_factor_sampler


@dataclass
class FitOutcome:
    """What fitting left: the per-epoch rows, the best score, and how many epochs ran."""

    rows: list[dict[str, float]]
    best_score: float | None
    epochs_run: int


class SegmentationData(L.LightningDataModule):
    """Shuffled, augmented training batches and plain validation batches, seeded. With several processes
    each gets its share: training through a seeded DistributedSampler (padded so every process runs as many
    steps, which DDP needs), validation through one that never repeats an image (the summed confusion
    matrix then counts every pixel once)."""

    def __init__(self, config: TrainConfig, data: PreparedData):
        super().__init__()
        common = dict(size=config.size, channels=data.channels, mean=data.mean, std=data.std,
                      encoding=data.encoding, num_classes=data.num_classes, ignore_index=config.ignore_index)
        self.config = config
        self.repeat_factors = data.repeat_factors
        self.train_set = SegmentationDataset(
            data.train, resize=config.resize,
            augment=build_augmentation(config.augment, ignore_index=config.ignore_index, channels=data.channels),
            **common)
        # Validation sees whole images resized as training did, or the centre crop of crop-trained runs.
        val_resize = config.resize if resizes_whole_image(config.resize) else "center_crop"
        self.val_set = SegmentationDataset(data.val, resize=val_resize, augment=None, **common)
        self.workers = default_num_workers() if config.num_workers is None else config.num_workers

    def _share(self) -> tuple[int, int]:
        # (processes, this one's rank); one process when no Trainer runs this (data_loaders).
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._share()
        config, loader = self.config, dict(batch_size=self.config.batch_size, num_workers=self.workers,
                                           persistent_workers=self.workers > 0)
        drop_last = len(self.train_set) > config.batch_size  # a 1-image final batch breaks BatchNorm statistics
        if self.repeat_factors is not None:
            if world > 1:
                raise ConfigError(f"repeat_threshold: repeat-factor sampling runs in one process, not {world}")
            return DataLoader(self.train_set, sampler=repeat_factor_sampler(self.repeat_factors, config.seed),
                              drop_last=drop_last, **loader)
        if world == 1:
            return DataLoader(self.train_set, shuffle=True, generator=torch.Generator().manual_seed(config.seed),
                              drop_last=drop_last, **loader)
        # Lightning calls set_epoch on it every epoch, so a resumed run draws the same batches as it would have.
        sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
        return DataLoader(self.train_set, sampler=sampler, drop_last=len(sampler) > config.batch_size, **loader)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._share()
        sampler = None
        if world > 1:
            if len(self.val_set) < world:
                raise ConfigError(f"{len(self.val_set)} validation image(s) for {world} processes: each process "
                                  "needs at least one (raise val_fraction or use fewer devices)")
            sampler = UnrepeatedDistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(self.val_set, batch_size=self.config.batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.workers, persistent_workers=self.workers > 0)


def data_loaders(config: TrainConfig, data: PreparedData) -> tuple[DataLoader, DataLoader]:
    """One process's training and validation loaders (SegmentationData's)."""
    loaders = SegmentationData(config, data)
    return loaders.train_dataloader(), loaders.val_dataloader()


def fit(network: torch.nn.Module, config: TrainConfig, data: PreparedData, run_dir: Path, *, resume: bool,
        callbacks: Sequence[Callback] = (), launch: Launch = Launch()) -> FitOutcome:
    """Train `network` in place; afterwards rank 0's holds the kept checkpoint's weights (if one was saved): the best
    by config.monitor, or with config.keep "last" the last epoch's."""
    module = SegmentationModule(network, config, data.num_classes)
    history = EpochHistory(run_dir, monitor=config.monitor)
    if resume and launch.leader:
        history.load_existing()
    trainer, checkpoint = build_trainer(config, run_dir, history, extra_callbacks=callbacks, launch=launch)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"{last}: no checkpoint to resume from")
    try:
        trainer.fit(module, datamodule=SegmentationData(config, data), ckpt_path=str(last) if resume else None)
    except Exception as error:
        # Another process of the run died: one line saying which and how to resume, not the collective's traceback.
        stopped = peer_failure(error, launch, trainer.world_size, run_dir, trainer.strategy.launcher) \
            if trainer.world_size > 1 or launch.external else None
        if stopped is None:
            raise
        raise stopped from None
    if not launch.leader:  # rank 0 writes the bundle; the run folder may not even be shared with this node
        return FitOutcome(history.rows, None, trainer.current_epoch)
    folder = run_dir / "checkpoints"
    if spawns(config):
        # The spawned processes trained; this one only learns the best checkpoint's path. The rest is in files.
        history.load_existing()
        best_path = checkpoint.best_model_path or (str(last) if last.is_file() else "")
        epochs_run = int(max(row["epoch"] for row in history.rows)) + 1 if history.rows else 0
    else:
        best_path = checkpoint.best_model_path
        epochs_run = trainer.current_epoch
    kept_path = str(last) if config.keep == "last" and last.is_file() else best_path
    saved = load_checkpoint(kept_path, folder) if kept_path else {}
    if config.keep == "last":
        best_score = history.rows[-1].get(config.monitor) if history.rows else None  # the kept epoch's score
    elif spawns(config):
        scores = [s.get("best_model_score") for s in saved.get("callbacks", {}).values()
                  if isinstance(s, dict) and s.get("monitor") == config.monitor]
        best_score = float(scores[0]) if scores and scores[0] is not None else None
    else:
        best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    if saved:
        # Weights-only and inside checkpoints/: a resumed run folder may not be the user's own.
        network.load_state_dict(network_weights(saved["state_dict"]))
    return FitOutcome(history.rows, best_score, epochs_run)
