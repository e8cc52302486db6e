"""`masksmith.train`: data → splits → model → Lightning fit → run folder with the model bundle."""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
import torch
from torch.utils.data import DataLoader

from masksmith import __version__
from masksmith.augment import build_augmentation
from masksmith.bundle import BundleMeta, save_bundle
from masksmith.checkpoints import load_checkpoint
from masksmith.config import TrainConfig, config_to_yaml, make_config, resolve_config
from masksmith.data.check import check_dataset, fingerprint, write_fingerprint
from masksmith.data.classes import find_class_file, read_class_names
from masksmith.data.dataset import SegmentationDataset
from masksmith.data.discover import Sample, discover, split_samples
from masksmith.data.limits import image_pixel_limit
from masksmith.data.masks import (
    MaskEncoding,
    color_table_text,
    describe_encoding,
    detect_encoding,
    image_channels,
)
from masksmith.data.validate import validate_samples
from masksmith.engine import (
    EpochHistory,
    SegmentationModule,
    build_trainer,
    pick_accelerator,
    default_num_workers,
)
from masksmith.errors import ConfigError, DataError
from masksmith.fileio import folder_lock, remove_stale_temps, write_text_atomic
from masksmith.models import MODELS, build_model, model_options
from masksmith.models.smp import encoder_normalization, import_smp, is_weights_file, load_weights
from masksmith.budget import plan_network
from masksmith.plan import derive_plan, plan_text, plan_to_dict
from masksmith.runlog import RunLog
from masksmith.visualize import default_colors

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


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


@dataclass
class DataPlan:
    """The data decisions of a run: splits, mask encoding, classes, channels, normalization."""

    train: list[Sample]
    val: list[Sample]
    encoding: MaskEncoding
    class_names: list[str]
    channels: int
    mean: list[float]
    std: list[float]
    split: dict[str, Any]


def train(data: str | Path | None = None, *, config: str | Path | TrainConfig | None = None,
          resume: str | Path | None = None, callbacks: Sequence[Callback] = (), **options: Any) -> TrainResult:
    """Train a model: `masksmith.train("data/", epochs=20, size=256)`; options are TrainConfig fields.

    `callbacks`: extra Lightning callbacks (profiling, custom logging), added to masksmith's own.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir}: not a run folder to resume (no config.yaml)")
        cfg = resolve_config(run_dir / "config.yaml", **options)
        cfg.out = str(run_dir)
    else:
        if isinstance(config, TrainConfig):
            cfg = make_config({**config.model_dump(), **{k: v for k, v in options.items() if v is not None}})
        else:
            cfg = resolve_config(config, data=str(data) if data is not None else None, **options)
        run_dir = next_run_dir(cfg.out)
        cfg.out = str(run_dir)
    # One training per run folder at a time: a second one fails here, before reading any data, instead of
    # mixing its checkpoints and logs into the first one's. The lock goes with the process, even on a crash.
    with folder_lock(run_dir, kind="training"):
        if resume is None and (run_dir / "checkpoints").exists():
            # Training again into a finished run would overwrite its model and mix its logs.
            raise ConfigError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                              "or choose another --out")
        # What a killed run was writing; no one else writes here while we hold the lock.
        remove_stale_temps(run_dir, run_dir / "checkpoints")
        if cfg.classes is None and cfg.data is not None and find_class_file(cfg.data) is not None:
            cfg.classes = str(find_class_file(cfg.data))  # the dataset's own list (e.g. from masksmith convert)
        with image_pixel_limit(cfg.max_image_pixels):  # every image read of the run obeys the run's limit
            return _run(cfg, run_dir, resume=resume is not None, callbacks=callbacks)


def next_run_dir(out: str | None, base: Path = Path("runs")) -> Path:
    """The run folder: `out` as given, or runs/train, runs/train2, ... (the first that does not exist)."""
    if out:
        return Path(out)
    candidate, number = base / "train", 1
    while candidate.exists():
        number += 1
        candidate = base / f"train{number}"
    return candidate


def plan_data(cfg: TrainConfig, log: RunLog) -> DataPlan:
    """Find the pairs, split them, and decide encoding, classes and normalization."""
    splits = discover(cfg.data, mask_suffix=cfg.mask_suffix, skip_unpaired=cfg.skip_unpaired)
    if "train" in splits and "val" in splits:
        train_samples, val_samples = splits["train"], splits["val"]
        split = {"kind": "folders"}
    else:
        pool = splits.get("train") or splits.get("all") or []
        train_samples, val_samples = split_samples(pool, cfg.val_fraction, cfg.seed)
        split = {"kind": "random", "seed": cfg.seed, "val_fraction": cfg.val_fraction}
    split["val"] = [s.name for s in val_samples]
    names = read_class_names(cfg.classes)
    encoding, detected_classes = detect_encoding(
        [s.mask for s in train_samples if s.mask is not None], foreground=cfg.foreground, palette=cfg.palette,
        ignore_color=cfg.ignore_color)
    if names is not None and encoding.kind == "binary" and len(names) != 2:
        encoding, detected_classes = MaskEncoding(kind="index"), len(names)
    if names is None:
        names = (["background", "foreground"] if encoding.kind == "binary"
                 else list(encoding.names) if encoding.names else [f"class_{i}" for i in range(detected_classes)])
    elif encoding.kind == "index" and detected_classes > len(names):
        raise DataError(f"{cfg.classes}: lists {len(names)} classes but the masks hold values up to "
                        f"{detected_classes - 1}")
    elif encoding.kind == "color" and detected_classes != len(names):
        raise DataError(f"{cfg.classes}: lists {len(names)} classes but the color masks hold {detected_classes} colors")
    channels = cfg.channels or image_channels(train_samples[0].image)
    mean = cfg.mean or (IMAGENET_MEAN if channels == 3 else [0.5])
    std = cfg.std or (IMAGENET_STD if channels == 3 else [0.25])
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean and std need {channels} values each (one per input channel)")
    log.info(f"data: {len(train_samples)} train / {len(val_samples)} val images ({split['kind']} split), "
             f"{len(names)} classes{f' (from {cfg.classes})' if isinstance(cfg.classes, str) else ''}, {describe_encoding(encoding)}, {channels}-channel input")
    if encoding.kind == "color":
        log.info(color_table_text(encoding, names=names).rstrip())
    return DataPlan(train_samples, val_samples, encoding, names, channels, list(mean), list(std), split)


def apply_auto_plan(cfg: TrainConfig, run_dir: Path, log: RunLog) -> TrainConfig:
    """Check the data, fingerprint it, and fill the options the user did not give from the plan."""
    report = check_dataset(cfg.data, classes=cfg.classes, foreground=cfg.foreground, mask_suffix=cfg.mask_suffix,
                           ignore_index=cfg.ignore_index, progress=not cfg.quiet, palette=cfg.palette,
                           ignore_color=tuple(cfg.ignore_color) if cfg.ignore_color else None)
    data_fingerprint = fingerprint(report)
    write_fingerprint(report, run_dir / "fingerprint.json")
    given = {name: getattr(cfg, name) for name in cfg.model_fields_set}
    device = "cuda" if pick_accelerator(cfg.device) == "gpu" else "cpu"
    # The network and input size first (timed against --max-time), then the rest with those as given.
    network, timed = plan_network(data_fingerprint, given=set(given), known=given, device=device,
                                  max_time=cfg.max_time, epochs=cfg.epochs)
    choices = network + derive_plan(data_fingerprint, device=device,
                                    given={**given, **{choice.option: choice.value for choice in network}})
    write_text_atomic(run_dir / "plan.json", json.dumps({**plan_to_dict(choices), "timed_candidates": timed}, indent=1))
    log.info("plan (options not given, derived from the data; see plan.json):\n" + plan_text(choices).rstrip())
    return make_config({**cfg.model_dump(), **{choice.option: choice.value for choice in choices}})


def _run(cfg: TrainConfig, run_dir: Path, resume: bool, callbacks: Sequence[Callback] = ()) -> TrainResult:
    started = time.perf_counter()
    # Our own log says what matters; Lightning's start-up chatter and tips would bury it.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # expected when resuming
    log = RunLog(run_dir / "train.log", quiet=cfg.quiet)
    MODELS.get(cfg.model)  # an unknown model name fails now, not after the data has been read
    model_arguments = _model_arguments(cfg)  # as do bad encoder/weights options and a missing extra
    user_normalization = bool({"mean", "std"} & cfg.model_fields_set)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.auto and not resume:
        # Layout and pairing errors first, in their own words, before the check pass summarises them.
        discover(cfg.data, mask_suffix=cfg.mask_suffix, skip_unpaired=cfg.skip_unpaired)
        cfg = apply_auto_plan(cfg, run_dir, log)
        model_arguments = _model_arguments(cfg)  # the plan may have chosen an encoder and its weights
    plan = plan_data(cfg, log)
    normalization = encoder_normalization(cfg.model, model_arguments, plan.channels)
    if normalization and not user_normalization and not resume:
        # A pretrained encoder expects the statistics it was trained with, not the dataset's own.
        plan.mean, plan.std = normalization
        cfg.mean, cfg.std = list(plan.mean), list(plan.std)
        log.info(f"normalization of encoder {model_arguments.get('encoder')}: mean {plan.mean}, std {plan.std}")
    checked = dict(encoding=plan.encoding, num_classes=len(plan.class_names), ignore_index=cfg.ignore_index,
                   progress=not cfg.quiet, skip_invalid=cfg.skip_invalid)
    plan.train = validate_samples(plan.train, **checked)
    plan.val = validate_samples(plan.val, **checked)
    plan.split["val"] = [s.name for s in plan.val]  # the recorded split is what was used: skipped pairs leave it
    if not plan.train or not plan.val:
        raise DataError(f"{cfg.data}: no usable {'training' if not plan.train else 'validation'} images left")
    header = (f"masksmith {__version__} training config (resolved). Repeat this run with:\n"
              f"  masksmith train --config {run_dir / 'config.yaml'}")
    write_text_atomic(run_dir / "config.yaml", config_to_yaml(cfg, header))
    write_text_atomic(run_dir / "split.json", json.dumps(
        {**plan.split, "train": [s.name for s in plan.train]}, indent=1))

    num_classes = len(plan.class_names)
    sigmoid = num_classes == 2 and cfg.binary_head == "sigmoid"
    network = build_model(cfg.model, plan.channels, 1 if sigmoid else num_classes, **model_arguments)
    if cfg.weights and "weights" not in model_arguments:
        # Models without their own `weights` option (the built-in ones) take a local file here.
        report = load_weights(network, cfg.weights, part="auto")
        log.info(f"weights: {report.loaded} tensors of the {report.part} from {cfg.weights}")
    elif (report := getattr(network, "masksmith_weights", None)) is not None:  # loaded by the builder (unet)
        log.info(f"weights: {report.loaded} tensors of the {report.part} from {report.path}")
    module = SegmentationModule(network, cfg, num_classes)
    train_loader, val_loader = _loaders(cfg, plan)
    history = EpochHistory(run_dir, monitor=cfg.monitor)
    if resume:
        history.load_existing()
    trainer, checkpoint = build_trainer(cfg, run_dir, history, extra_callbacks=callbacks)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"{last}: no checkpoint to resume from")
    log.info(f"model {cfg.model} ({sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters); "
             f"run folder {run_dir}")
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)

    best_path = checkpoint.best_model_path
    if best_path:
        # Weights-only and inside checkpoints/: a resumed run folder may not be the user's own.
        state = load_checkpoint(best_path, run_dir / "checkpoints")["state_dict"]
        network.load_state_dict({k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")})
    best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    meta = BundleMeta(
        model=cfg.model, model_options=_bundle_options(model_arguments), in_channels=plan.channels,
        out_channels=1 if sigmoid else num_classes, class_names=plan.class_names,
        colors=class_colors(plan.encoding, num_classes), size=cfg.size, resize=cfg.resize, mean=plan.mean,
        std=plan.std, threshold=cfg.threshold, mask_encoding=plan.encoding.to_dict(),
        ignore_index=cfg.ignore_index, split=plan.split)
    bundle = save_bundle(run_dir / "model.msb", network.state_dict(), meta)
    best_epoch = _best_epoch(history.rows, cfg)
    result = TrainResult(run_dir=run_dir, bundle=bundle, best_epoch=best_epoch, best_score=best_score,
                         monitor=cfg.monitor, epochs_run=trainer.current_epoch,
                         seconds=time.perf_counter() - started,
                         validation=history.rows[best_epoch] if best_epoch is not None else {})
    write_text_atomic(run_dir / "results.json", json.dumps(
        {"best_epoch": best_epoch, "monitor": cfg.monitor, "best_score": best_score,
         "epochs_run": result.epochs_run, "seconds": round(result.seconds, 1),
         "best_epoch_metrics": result.validation}, indent=1))
    score = "n/a" if best_score is None else f"{best_score:.4f}"
    log.info(f"done in {result.seconds / 60:.1f} min: best {cfg.monitor} {score} at epoch {best_epoch}; "
             f"model bundle {bundle}")
    log.info(f"predict with: masksmith predict {bundle} IMAGES... --out predictions")
    return result


def _model_arguments(cfg: TrainConfig) -> dict[str, Any]:
    """The builder options: model_options plus the top-level `encoder` and (for smp models) `weights`."""
    arguments = dict(cfg.model_options)
    accepted = model_options(cfg.model)
    for name in ("encoder", "weights"):
        value = getattr(cfg, name)
        if value is None:
            continue
        if name in arguments and arguments[name] != value:
            raise ConfigError(f"{name} is given twice, as {value!r} and as model option {arguments[name]!r}")
        if name in accepted:
            arguments[name] = value
        elif name == "encoder":
            raise ConfigError(f"model {cfg.model!r} takes no encoder; encoders go with smp models, "
                              "e.g. --model smp.Unet --encoder resnet34")
        elif not is_weights_file(value):
            raise ConfigError(f"model {cfg.model!r}: weights {value!r} is not a local file; hub weights "
                              "(imagenet) are for smp encoders, e.g. --model smp.Unet --weights imagenet")
    if cfg.model.startswith("smp."):
        import_smp(cfg.model)  # the install hint now, before the data check
    return arguments


def _bundle_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """Model options for the bundle: the architecture only, since the bundle holds the weights itself."""
    # Rebuilding from a bundle must neither download hub weights nor need the original weights file.
    return {**arguments, "weights": None} if "weights" in arguments else dict(arguments)


def class_colors(encoding: MaskEncoding, num_classes: int) -> list[list[int]]:
    """Display colors: the dataset's own for color masks (so predictions look like the labels), else VOC's."""
    if encoding.kind == "color" and encoding.colors:
        return [list(color) for color in encoding.colors]
    return default_colors(num_classes).tolist()


def _best_epoch(rows: list[dict[str, float]], cfg: TrainConfig) -> int | None:
    scored = [(i, r[cfg.monitor]) for i, r in enumerate(rows) if cfg.monitor in r and r[cfg.monitor] == r[cfg.monitor]]
    if not scored:
        return None
    pick = max if cfg.monitor_mode() == "max" else min
    return pick(scored, key=lambda item: item[1])[0]


def _loaders(cfg: TrainConfig, plan: DataPlan) -> tuple[DataLoader, DataLoader]:
    common = dict(size=cfg.size, channels=plan.channels, mean=plan.mean, std=plan.std, encoding=plan.encoding,
                  num_classes=len(plan.class_names), ignore_index=cfg.ignore_index)
    train_set = SegmentationDataset(
        plan.train, resize=cfg.resize,
        augment=build_augmentation(cfg.augment, ignore_index=cfg.ignore_index, channels=plan.channels), **common)
    val_set = SegmentationDataset(plan.val, resize="resize" if cfg.resize == "resize" else "center_crop",
                                  augment=None, **common)
    workers = default_num_workers() if cfg.num_workers is None else cfg.num_workers
    generator = torch.Generator().manual_seed(cfg.seed)
    # drop_last avoids a 1-image final batch, which breaks BatchNorm statistics.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                              generator=generator, drop_last=len(train_set) > cfg.batch_size,
                              persistent_workers=workers > 0)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                            persistent_workers=workers > 0)
    return train_loader, val_loader
