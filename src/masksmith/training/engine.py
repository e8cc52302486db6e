"""Lightning glue: the LightningModule, the per-epoch history (metrics.csv + curves.png), the Trainer."""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar as BarCallback
from lightning.pytorch.loggers import TensorBoardLogger

from masksmith.config import TrainConfig
from masksmith.core.cpu_memory import keep_freed_memory
from masksmith.core.fileio import write_text_atomic
from masksmith.evaluation.metrics import ConfusionMatrix, per_image_dice
from masksmith.models import logits_to_classes
from masksmith.models.base import batchnorm_eval, encoder_of
from masksmith.models.encoders import ENCODERS, Encoder
from masksmith.models.freeze import freeze_encoder, freezes_encoder, frozen_stage_layers
from masksmith.training.checkpoints import AtomicCheckpointIO, checkpoint_callbacks
from masksmith.training.losses import build_loss
from masksmith.training.parallel import Launch, accelerator, build_strategy, lightning_precision


class SegmentationModule(L.LightningModule):
    """Trains a segmentation network with the configured loss, optimizer and schedule."""

    def __init__(self, network: torch.nn.Module, config: TrainConfig, num_classes: int):
        super().__init__()
        self.network = network
        self.config = config
        self.num_classes = num_classes
        self.loss_fn = build_loss(
            config.loss, num_classes=num_classes, ignore_index=config.ignore_index,
            class_weights=config.class_weights)
        self.confusion = ConfusionMatrix(num_classes, config.ignore_index)
        self._image_dice: list[float] = []
        self._loss_sum, self._loss_images = 0.0, 0  # val_loss: the batch losses weighted by their images
        self.last_validation: dict[str, Any] = {}
        self._schedule_clock: tuple[int, float] | None = None  # (first epoch of this fit, its start time)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last == "on" or (self.config.channels_last == "auto" and images.is_cuda):
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        logits = self(self._prepare(batch["image"]))
        loss = self.loss_fn(logits, batch["mask"])
        # sync_dist: every process runs as many equal batches, so the mean of the processes' means is exact.
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(logits), sync_dist=True)
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        logits = self(self._prepare(batch["image"]))
        loss = self.loss_fn(logits, batch["mask"])
        self._loss_sum += float(loss) * len(logits)
        self._loss_images += len(logits)
        predictions = logits_to_classes(logits.float(), self.config.threshold).cpu()
        targets = batch["mask"].cpu()
        self.confusion.update(predictions, targets)
        for prediction, target in zip(predictions, targets):
            self._image_dice.append(
                per_image_dice(prediction, target, self.num_classes, self.config.ignore_index))

    def on_validation_epoch_start(self) -> None:
        self.confusion.reset()
        self._image_dice = []
        self._loss_sum, self._loss_images = 0.0, 0

    def on_validation_epoch_end(self) -> None:
        # Every process saw its own share of the validation images: the counts are summed over all of them
        # before any score is computed, so the scores are those of one process seeing every image.
        dice = np.array(self._image_dice, dtype=np.float64)
        dice = dice[~np.isnan(dice)]  # images with no counted pixel (all ignore) have no Dice: left out
        k = self.num_classes
        totals = self.sum_over_processes(np.concatenate([
            self.confusion.matrix.ravel().astype(np.float64),
            [dice.sum(), dice.size, self._loss_sum, self._loss_images]]))
        result = ConfusionMatrix.from_counts(totals[:k * k].reshape(k, k), self.config.ignore_index).compute()
        dice_sum, dice_count, loss_sum, loss_images = totals[k * k:]
        metrics = {
            "val_dice": result["mean_dice_no_background"],
            "val_miou": result["miou"],
            "val_iou": result["miou_no_background"],
            "val_pixel_accuracy": result["pixel_accuracy"],
            "val_image_dice": dice_sum / dice_count if dice_count else None,
            "val_loss": loss_sum / loss_images if loss_images else None,
        }
        metrics = {name: (float("nan") if value is None else float(value)) for name, value in metrics.items()}
        self.last_validation = result
        for name, value in metrics.items():
            # The same values on every process already; Lightning's sync_dist would average them again.
            self.log(name, value, prog_bar=name == self.config.monitor or name == "val_dice")

    def sum_over_processes(self, values: np.ndarray) -> np.ndarray:
        """`values` (float64) summed over every process of the run; unchanged for one process."""
        if self._trainer is None or self.trainer.world_size == 1:
            return values
        tensor = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(tensor, reduce_op="sum").cpu().numpy()

    def configure_optimizers(self) -> Any:
        config = self.config
        groups = self.parameter_groups()
        if config.optimizer == "adam":
            optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
        elif config.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        elif config.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.RMSprop(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
        if config.scheduler == "none":
            return optimizer
        if config.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=config.monitor_mode(), factor=0.5, patience=max(2, config.early_stopping // 3))
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": config.monitor, "interval": "epoch"}}
        # cosine (down to lr / 100) or poly as in DeepLab, lr * (1 - progress) ** 0.9, where progress is the
        # epoch over the schedule's length: --epochs, or the epochs that fit in what is left of --max-time.
        shape = _cosine if config.scheduler == "cosine" else _poly
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: shape(min(1.0, epoch / self.schedule_length(epoch))))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_train_start(self) -> None:
        self._schedule_clock = (self.current_epoch, time.monotonic())

    def schedule_length(self, epochs_done: int) -> int:
        """Epochs the cosine/poly schedule spans: `epochs`, or fewer when the time budget will stop training
        first, so the rate has annealed by the deadline (a 300-epoch cosine cut off by --max-time at epoch
        70 would end at 95% of its peak rate). Estimated from the mean epoch time of this fit so far."""
        timer = self._trainer and next((c for c in self._trainer.callbacks if isinstance(c, Timer)), None)
        seconds_left = timer.time_remaining("train") if timer else None
        if seconds_left is None or self._schedule_clock is None or epochs_done <= self._schedule_clock[0]:
            return self.config.epochs
        first_epoch, started = self._schedule_clock
        seconds_per_epoch = (time.monotonic() - started) / (epochs_done - first_epoch)
        length = epochs_within_budget(self.config.epochs, epochs_done, seconds_per_epoch, seconds_left)
        if self._trainer.world_size > 1:
            # Each process has its own clock; rank 0's estimate keeps every replica on the same learning rate.
            length = int(self._trainer.strategy.broadcast(length, src=0))
        return length

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the rest at `lr`, the encoder (when the model has one) at `encoder_lr`."""
        encoder = self.encoder
        if encoder is None:
            return [{"params": [p for p in self.network.parameters() if p.requires_grad]}]
        encoder_ids = {id(p) for p in encoder.parameters()}
        rest = [p for p in self.network.parameters() if id(p) not in encoder_ids and p.requires_grad]
        # The encoder's parameters join the optimizer even while frozen: a frozen parameter just gets
        # no gradient (and Adam/SGD skip it), so unfreezing needs no optimizer rebuild.
        # The decoder group comes first: the history's "lr" column reads group 0.
        return [{"params": rest, "name": "decoder"},
                {"params": list(encoder.parameters()), "lr": self.encoder_lr, "name": "encoder"}]

    @property
    def encoder(self) -> torch.nn.Module | None:
        """The network's encoder (smp models and masksmith's UNet have one), or None."""
        return encoder_of(self.network)

    @property
    def encoder_lr(self) -> float:
        """The encoder's learning rate: as configured, else lr / 10 after a frozen start, else lr."""
        if self.config.encoder_lr is not None:
            return self.config.encoder_lr
        # Pretrained features are fine-tuned gently once the randomly initialised decoder has settled.
        return self.config.lr / 10 if self.config.freeze_encoder_epochs else self.config.lr

    @property
    def encoder_frozen(self) -> bool:
        """Whether the encoder is frozen in the current epoch (epochs 0 .. freeze_encoder_epochs - 1)."""
        if not self.config.freeze_encoder_epochs or self.encoder is None or self._trainer is None:
            return False
        return self.current_epoch < self.config.freeze_encoder_epochs

    @property
    def frozen_stage_layers(self) -> list[torch.nn.Module]:
        """The encoder layers frozen for the whole run (--frozen-stages), empty without them."""
        return frozen_stage_layers(self.network, self.config.frozen_stages)  # none to freeze: on_fit_start says so

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze (no gradients, BatchNorm statistics fixed) or unfreeze the encoder; its frozen stages stay frozen."""
        freeze_encoder(self.network, frozen, stages=self.config.frozen_stages, training=self.training)

    def train(self, mode: bool = True) -> "SegmentationModule":
        """Switch train/eval mode, keeping a frozen encoder's (or frozen stages') BatchNorm layers in eval mode."""
        # Lightning calls train() after every validation run; without this the frozen encoder's
        # BatchNorm would go back to updating its running statistics.
        super().train(mode)
        if mode:
            for layer in [self.encoder] if self.encoder_frozen else self.frozen_stage_layers:
                batchnorm_eval(layer)
        return self

    def on_fit_start(self) -> None:
        """Check the freeze options against the model before the first epoch; keep freed tensor memory in every
        training process (ddp_spawn's start fresh)."""
        from masksmith.errors import ConfigError

        keep_freed_memory()

        if (self.config.freeze_encoder_epochs or self.config.encoder_lr is not None) and self.encoder is None:
            raise ConfigError(f"model {self.config.model!r} has no encoder: freeze_encoder_epochs and encoder_lr "
                              "need one (smp models and unet have one)")
        if self.config.frozen_stages and not isinstance(self.encoder, Encoder):
            raise ConfigError("frozen_stages needs one of masksmith's pretrained encoders (--model unet --encoder "
                              f"{'|'.join(ENCODERS)}); model {self.config.model!r} has none")

    def on_train_epoch_start(self) -> None:
        """Apply the schedule: frozen encoder before epoch freeze_encoder_epochs, trainable from it on (but for
        its frozen stages)."""
        if freezes_encoder(self.config.freeze_encoder_epochs, self.config.frozen_stages) and self.encoder is not None:
            self.set_encoder_frozen(self.encoder_frozen)


def epochs_within_budget(epochs: int, epochs_done: int, seconds_per_epoch: float, seconds_left: float) -> int:
    """The epochs a run will complete: `epochs`, or fewer if the time left stops it first (at least 1)."""
    return max(1, min(epochs, epochs_done + math.floor(max(seconds_left, 0.0) / max(seconds_per_epoch, 1e-9))))


def _cosine(progress: float) -> float:
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def _poly(progress: float) -> float:
    return (1 - progress) ** 0.9


class EpochHistory(Callback):
    """Writes one row per epoch to metrics.csv and redraws curves.png, as nnU-Net's progress plot."""

    def __init__(self, run_dir: Path, plot: bool = True, monitor: str | None = None):
        self.run_dir = run_dir
        self.plot = plot
        # The metric whose best epoch curves.png marks (the one checkpointing follows); losses are not marked.
        self.monitor = monitor if monitor and "loss" not in monitor else None
        self.rows: list[dict[str, float]] = []

    def load_existing(self) -> None:
        """Continue the history of a resumed run."""
        path = self.run_dir / "metrics.csv"
        if path.is_file():
            with path.open(newline="") as handle:
                self.rows = [{key: float(value) for key, value in row.items() if value != ""}
                             for row in csv.DictReader(handle)]

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Callbacks' on_validation_epoch_end runs before the module logs its metrics; this runs after.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row: dict[str, float] = {"epoch": float(trainer.current_epoch)}
        if "train_loss" in metrics:
            row["train_loss"] = float(metrics["train_loss"])
        for name, value in sorted(metrics.items()):
            if name.startswith("val_"):
                row[name] = float(value)
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:  # every process holds the same rows; one writes them
            self._write()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # The epoch's mean training loss is only known here, after validation has run.
        if self.rows and "train_loss" in trainer.callback_metrics:
            if self.rows[-1]["epoch"] == trainer.current_epoch:
                self.rows[-1]["train_loss"] = float(trainer.callback_metrics["train_loss"])
                if trainer.is_global_zero:
                    self._write()

    def _write(self) -> None:
        columns = ["epoch", "train_loss"] + sorted({k for r in self.rows for k in r} - {"epoch", "train_loss", "lr"}) + ["lr"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in self.rows:
            writer.writerow({key: ("" if key not in row else (int(row[key]) if key == "epoch" else f"{row[key]:.6g}"))
                             for key in columns})
        write_text_atomic(self.run_dir / "metrics.csv", buffer.getvalue())
        if self.plot:
            from masksmith.visualize import plot_curves

            logged = any(math.isfinite(row.get(self.monitor, math.nan)) for row in self.rows) if self.monitor else False
            plot_curves(self.run_dir / "metrics.csv", self.run_dir / "curves.png",
                        monitor=self.monitor if logged else None)


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar without the logger's version number."""

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, module)
        metrics.pop("v_num", None)
        return metrics


class EpochLines(Callback):
    """One line per epoch (epoch, losses, scores, seconds) for output that is not a terminal: a CI log or a
    file gets no progress-bar redraws, which there are thousands of carriage-return fragments."""

    def __init__(self, write: Callable[[str], None] | None = None):
        self.write = write
        self._started = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # After validation: the epoch's train_loss and every val_ metric are known here.
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = ["train_loss"] + sorted(name for name in metrics if name.startswith("val_"))
        values = "  ".join(f"{name} {float(metrics[name]):.4f}" for name in shown if name in metrics)
        line = (f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {values}  "
                f"{time.monotonic() - self._started:.1f} s")
        (self.write or _write_stderr)(line)


def _write_stderr(line: str) -> None:
    # Looked up at each call: sys.stderr may be replaced (pytest, a redirected logger) after construction.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def progress_callback(quiet: bool, interactive: bool | None = None) -> Callback | None:
    """Progress for a run: a redrawn bar on a terminal, one line per epoch elsewhere, none when quiet."""
    if quiet:
        return None
    if interactive is None:
        interactive = sys.stderr.isatty()
    return ProgressBar() if interactive else EpochLines()


def pick_accelerator(device: str) -> str:
    """Map the config's device to a Lightning accelerator name."""
    return accelerator(device)


def default_num_workers() -> int:
    """Worker processes for data loading: none on a 2-core machine, where they steal compute threads."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def build_trainer(config: TrainConfig, run_dir: Path, history: EpochHistory,
                  extra_callbacks: Sequence[Callback] = (), launch: Launch = Launch()) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer with best/last checkpoints, early stopping, the time budget and TensorBoard logs, on the
    configured devices, nodes, strategy and precision."""
    device = pick_accelerator(config.device)
    checkpoint, last = checkpoint_callbacks(run_dir / "checkpoints", config.monitor, config.monitor_mode())
    callbacks: list[Callback] = [checkpoint, last, history, *extra_callbacks]
    progress = progress_callback(config.quiet)
    if progress is not None:
        callbacks.append(progress)
    if config.ema_decay is not None:
        # Validation swaps the averaged weights in, and checkpoints hold them as their state_dict (the raw
        # weights go to current_model_state, for --resume), so the best checkpoint is the best average.
        # BatchNorm statistics are the live model's, not averaged: averaged running means lag the weights
        # (the membranes' Lite0 U-Net at batch 2, its last checkpoint: pixel error 0.091 with them, 0.078 without;
        # benchmarks/ema_statistics.py).
        callbacks.append(EMAWeightAveraging(decay=config.ema_decay, use_buffers=False))
    if config.early_stopping:
        callbacks.append(EarlyStopping(
            monitor=config.monitor, mode=config.monitor_mode(), patience=config.early_stopping,
            check_finite=False))
    trainer = L.Trainer(
        accelerator=device,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=build_strategy(config, launch),
        # Each process's share of the images comes from SegmentationData's samplers, not Lightning's, whose
        # validation sampler repeats images to even out the processes (and would count them twice).
        use_distributed_sampler=False,
        max_epochs=config.epochs,
        # Lightning's Timer broadcasts rank 0's decision, so every process stops after the same step.
        max_time={"minutes": config.max_time} if config.max_time else None,
        precision=lightning_precision(config),
        gradient_clip_val=config.grad_clip,
        # Bit-for-bit repeatable on CPU; some CUDA kernels have no deterministic version, so only warn there.
        deterministic=True if device == "cpu" else "warn",
        callbacks=callbacks,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""),
        # Lightning adds its own bar unless told there is none; a caller's bar callback keeps it on.
        enable_progress_bar=any(isinstance(c, BarCallback) for c in callbacks),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        plugins=[AtomicCheckpointIO(run_dir / "checkpoints")],
        default_root_dir=str(run_dir),
    )
    return trainer, checkpoint
