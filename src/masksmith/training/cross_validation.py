"""k-fold cross-validation, a layer above the training stages: seeded folds recorded in RUN/splits.json,
one run per fold in RUN/fold_K/ with its split fixed, then every fold's model scored on its own validation
images at original size (the out-of-fold predictions): RUN/cv_summary.json and RUN/cv_summary.md."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.callbacks import Callback

from masksmith.config import UserConfig, config_to_yaml, resolve_user_config
from masksmith.core.fileio import folder_lock, remove_stale_temps, write_text_atomic
from masksmith.core.runlog import RunLog
from masksmith.data.discover import Sample
from masksmith.data.limits import image_pixel_limit
from masksmith.errors import ConfigError, DataError
from masksmith.planning.stage import check_and_plan
from masksmith.training.cv_scores import score_folds, summary_table
from masksmith.training.network import check_names
from masksmith.training.prepare import find_pairs, with_dataset_classes, with_void_class
from masksmith.training.stages import quiet_lightning, run_stages

SPLITS_FILE = "splits.json"
SUMMARY_FILE = "cv_summary.json"
TABLE_FILE = "cv_summary.md"
SPLITS_FORMAT = "masksmith-cv-splits"
# The split folders the folds are drawn from; a test folder stays held out for the final comparison.
POOLED_SPLITS = ("train", "val", "all")


@dataclass
class CrossValidationResult:
    """What a cross-validation run produced: the fold bundles and the out-of-fold summary."""

    run_dir: Path
    members: list[Path]
    summary: dict[str, Any]
    seconds: float

    @property
    def bundle(self) -> Path:
        """The run folder: predict and evaluate take it as the ensemble of its folds."""
        return self.run_dir


def fold_dir(run_dir: Path, fold: int) -> Path:
    """RUN/fold_K."""
    return run_dir / f"fold_{fold}"


def is_fold_folder(folder: Path) -> bool:
    """True for a RUN/fold_K folder (its split.json records a fold)."""
    try:
        record = json.loads((Path(folder) / "split.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("kind") == "fold"


def cv_pool(data: str, splits: dict[str, list[Sample]]) -> tuple[list[Sample], list[str], dict[str, int]]:
    """The pairs the folds are drawn from (train and val folders of the discovered `splits` pooled, or all), the
    splits pooled, and the image count of each split left out (test)."""
    pool = sorted((s for name in POOLED_SPLITS for s in splits.get(name, [])), key=lambda s: s.name)
    left_out = {name: len(samples) for name, samples in splits.items() if name not in POOLED_SPLITS}
    if not pool:
        raise DataError(f"{data}: no train images to cross-validate (found only: {', '.join(sorted(splits))})")
    seen: dict[str, Path] = {}
    for sample in pool:
        # Folds name their images by stem (as split.json does): two images of one name would be one entry.
        if sample.name in seen:
            raise DataError(f"{sample.image} and {seen[sample.name]} share the name {sample.name!r}; "
                            "cross-validation needs unique image names across the train and val folders")
        seen[sample.name] = sample.image
    return pool, [name for name in POOLED_SPLITS if name in splits], left_out


def make_folds(names: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """The validation names of each fold: a seeded shuffle dealt round-robin (fold sizes differ by at most one)."""
    if folds < 2:
        raise ConfigError(f"folds must be at least 2 (got {folds}): one fold would validate on its training images")
    ordered = sorted(set(names))
    if folds > len(ordered):
        raise DataError(f"{folds} folds need at least {folds} images (one validation image each); found {len(ordered)}")
    random.Random(seed).shuffle(ordered)
    return [sorted(ordered[fold::folds]) for fold in range(folds)]


def splits_record(val_folds: list[list[str]], *, seed: int, data: str, pooled: list[str],
                  left_out: dict[str, int]) -> dict[str, Any]:
    """splits.json: nnU-Net's splits_final.json (a list of {train, val} names) with how it was made."""
    everything = sorted(name for fold in val_folds for name in fold)
    return {"format": SPLITS_FORMAT, "folds": len(val_folds), "seed": seed, "data": data,
            "pooled": pooled, "left_out": left_out,
            "splits": [{"train": sorted(set(everything) - set(fold)), "val": fold} for fold in val_folds]}


def read_splits(path: Path, pool: Sequence[str]) -> list[list[str]]:
    """The validation names of each fold from splits.json, checked: every image of the pool in exactly one
    validation fold, its train list the rest; ConfigError (or DataError when the data changed) naming the file."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable splits file ({error})") from None
    entries = record.get("splits") if isinstance(record, dict) else None
    if (not isinstance(entries, list) or len(entries) < 2
            or not all(isinstance(e, dict) and all(isinstance(e.get(key), list) for key in ("train", "val"))
                       and all(isinstance(name, str) for key in ("train", "val") for name in e[key]) for e in entries)):
        raise ConfigError(f"{path}: not a splits file (expected 'splits': a list of at least 2 {{train, val}} name lists)")
    val_folds = [list(entry["val"]) for entry in entries]
    counted: dict[str, int] = {}
    for fold in val_folds:
        for name in fold:
            counted[name] = counted.get(name, 0) + 1
    twice = sorted(name for name, count in counted.items() if count > 1)
    if twice or not all(val_folds):
        problem = f"{twice[0]!r} is in {counted[twice[0]]} validation folds" if twice else "a fold has no validation image"
        raise ConfigError(f"{path}: damaged splits file: {problem}")
    for index, entry in enumerate(entries):
        if set(entry["train"]) != set(counted) - set(entry["val"]):
            raise ConfigError(f"{path}: damaged splits file: fold {index}'s train list is not the other folds' images")
    missing, extra = sorted(set(counted) - set(pool)), sorted(set(pool) - set(counted))
    if missing or extra:
        which = (f"{len(missing)} of its images are gone (first: {missing[0]})" if missing
                 else f"{len(extra)} images are new (first: {extra[0]})")
        raise DataError(f"{path}: the data changed since the folds were made: {which}; start a new run")
    return val_folds


def train_folds(user: UserConfig, run_dir: Path, *, resume: bool, callbacks: Sequence[Callback] = ()) -> CrossValidationResult:
    """Cross-validate: splits.json, each fold trained into RUN/fold_K/ (finished folds kept on resume), then
    the out-of-fold scores; the folder lock is held throughout."""
    if is_fold_folder(run_dir):
        raise ConfigError(f"{run_dir}: a fold of the cross-validation run {run_dir.parent}; "
                          f"continue it with --resume {run_dir.parent}")
    with folder_lock(run_dir, kind="cross-validation"):
        if not resume and ((run_dir / SPLITS_FILE).exists() or (run_dir / "checkpoints").exists()):
            raise ConfigError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                              "or choose another --out")
        if resume and not (run_dir / SPLITS_FILE).is_file():
            raise ConfigError(f"{run_dir}: no {SPLITS_FILE} to continue the cross-validation from")
        remove_stale_temps(run_dir)
        user = with_dataset_classes(user)
        with image_pixel_limit(user.config.max_image_pixels):
            return _run_folds(user, run_dir, resume=resume, callbacks=callbacks)


def _run_folds(user: UserConfig, run_dir: Path, *, resume: bool, callbacks: Sequence[Callback]) -> CrossValidationResult:
    started = time.perf_counter()
    quiet_lightning()
    config = user.config
    log = RunLog(run_dir / "train.log", quiet=config.quiet)
    check_names(config)
    user = with_void_class(user, log)
    config = user.config
    found = find_pairs(config)  # the run's one discovery: the folds and the plan's check both read it
    pool, pooled, left_out = cv_pool(config.data, found.splits)
    if resume:
        val_folds = read_splits(run_dir / SPLITS_FILE, [s.name for s in pool])
    else:
        assert config.folds is not None
        val_folds = make_folds([s.name for s in pool], config.folds, config.seed)
        if config.auto:
            # Planned once, from all the data: every fold trains the same network on the same inputs.
            user, _ = check_and_plan(user, run_dir, log, found)
        header = (f"masksmith cross-validation config (resolved). Continue it with:\n"
                  f"  masksmith train --resume {run_dir}")
        write_text_atomic(run_dir / "config.yaml", config_to_yaml(user.with_values({"auto": False}).config, header))
        write_text_atomic(run_dir / SPLITS_FILE, json.dumps(
            splits_record(val_folds, seed=config.seed, data=config.data,
                          pooled=pooled, left_out=left_out), indent=1))
    held = ", ".join(f"{name} ({count} images)" for name, count in left_out.items()) or "nothing"
    log.info(f"cross-validation: {len(val_folds)} folds of {len(pool)} images (validation "
             f"{'/'.join(str(len(f)) for f in val_folds)}, seed {config.seed}, {run_dir / SPLITS_FILE}); "
             f"held out: {held}")
    by_name = {sample.name: sample for sample in pool}
    members: list[Path] = []
    for fold, val_names in enumerate(val_folds):
        members.append(_train_fold(user, run_dir, (fold, len(val_folds)), val_names, pool, callbacks, log))
    folds = [[by_name[name] for name in names] for names in val_folds]
    summary = score_folds(members, folds, run_dir, progress=not config.quiet)
    summary.update(seed=config.seed, left_out=left_out)
    write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
    table = summary_table(summary)
    write_text_atomic(run_dir / TABLE_FILE, table)
    seconds = time.perf_counter() - started
    log.info(f"out-of-fold scores ({run_dir / SUMMARY_FILE}):\n{table.rstrip()}")
    log.info(f"done in {seconds / 60:.1f} min; predict with the fold ensemble: "
             f"masksmith predict {run_dir} IMAGES... --out predictions")
    return CrossValidationResult(run_dir, members, summary, seconds)


def _train_fold(user: UserConfig, run_dir: Path, which: tuple[int, int], val_names: list[str], pool: list[Sample],
                callbacks: Sequence[Callback], log: RunLog) -> Path:
    """Fold K of N's run in RUN/fold_K (kept when finished, resumed from its last checkpoint when killed)."""
    fold, count = which
    folder = fold_dir(run_dir, fold)
    bundle = folder / "model.msb"
    if bundle.is_file() and (folder / "results.json").is_file():
        log.info(f"fold {fold}: finished before, kept ({bundle})")
        return bundle
    wanted = set(val_names)
    # The bundle records the fold, so `evaluate FOLD/model.msb DATA --split val` scores its validation images.
    split = ([s for s in pool if s.name not in wanted], [s for s in pool if s.name in wanted],
             {"kind": "fold", "fold": fold, "folds": count, "seed": user.config.seed, "splits": f"../{SPLITS_FILE}"})
    log.info(f"fold {fold}: {len(split[0])} train / {len(split[1])} val images -> {folder}")
    remove_stale_temps(folder, folder / "checkpoints")
    if (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "config.yaml").is_file():
        fold_user = resolve_user_config(folder / "config.yaml")
        return run_stages(fold_user, folder, resume=True, callbacks=callbacks, fixed_split=split).bundle
    # The CV's resolved options; the fold itself plans nothing and splits nothing.
    fold_user = user.with_values({"folds": None, "auto": False, "out": str(folder)})
    return run_stages(fold_user, folder, resume=False, callbacks=callbacks, fixed_split=split).bundle
