"""Stage 5, write the results: the model bundle (everything prediction needs) and results.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.config import TrainConfig
from masksmith.core.fileio import write_text_atomic
from masksmith.training.augment import build_augmentation, trained_flips
from masksmith.training.fit import FitOutcome
from masksmith.training.network import bundle_options, output_channels
from masksmith.training.prepare import PreparedData


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    bundle: Path
    best_epoch: int | None
    best_score: float | None
    monitor: str
    epochs_run: int
    seconds: float
    validation: dict[str, Any]


def best_epoch(rows: list[dict[str, float]], config: TrainConfig) -> int | None:
    """The index of the kept epoch's row: the last one with keep "last", else the one with the best finite
    `monitor` value; None when no epoch scored."""
    if config.keep == "last":
        return len(rows) - 1 if rows else None
    scored = [(i, r[config.monitor]) for i, r in enumerate(rows)
              if config.monitor in r and r[config.monitor] == r[config.monitor]]
    if not scored:
        return None
    pick = max if config.monitor_mode() == "max" else min
    return pick(scored, key=lambda item: item[1])[0]


def write_bundle(network: torch.nn.Module, config: TrainConfig, arguments: dict[str, Any], data: PreparedData,
                 run_dir: Path) -> Path:
    """RUN/model.msb: the network's weights with its architecture, classes, colors, size and normalization."""
    meta = BundleMeta(
        model=config.model, model_options=bundle_options(arguments, network), in_channels=data.channels,
        out_channels=output_channels(config, data.num_classes), class_names=data.class_names,
        colors=[list(color) for color in data.labels.colors], size=config.size, resize=config.resize,
        mean=data.mean, std=data.std, threshold=config.threshold, mask_encoding=data.encoding.to_dict(),
        ignore_index=data.labels.ignore_index, split=data.split,
        tta_flips=trained_flips(build_augmentation(config.augment, ignore_index=config.ignore_index,
                                                   channels=data.channels)))
    return save_bundle(run_dir / "model.msb", network.state_dict(), meta)


def train_result(outcome: FitOutcome, config: TrainConfig, run_dir: Path, bundle: Path, seconds: float) -> TrainResult:
    """The TrainResult of a fit (written by write_results; a process other than rank 0 only returns it)."""
    best = best_epoch(outcome.rows, config)
    return TrainResult(run_dir=run_dir, bundle=bundle, best_epoch=best, best_score=outcome.best_score,
                       monitor=config.monitor, epochs_run=outcome.epochs_run, seconds=seconds,
                       validation=outcome.rows[best] if best is not None else {})


def write_results(outcome: FitOutcome, config: TrainConfig, run_dir: Path, bundle: Path, seconds: float) -> TrainResult:
    """RUN/results.json (best epoch, its metrics, epochs run, time) and the TrainResult it describes."""
    result = train_result(outcome, config, run_dir, bundle, seconds)
    best = result.best_epoch
    write_text_atomic(run_dir / "results.json", json.dumps(
        {"best_epoch": best, "kept": config.keep, "monitor": config.monitor, "best_score": outcome.best_score,
         "epochs_run": result.epochs_run, "seconds": round(seconds, 1),
         "best_epoch_metrics": result.validation}, indent=1))
    return result
