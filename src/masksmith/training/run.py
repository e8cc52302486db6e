"""`masksmith.train`: the run folder and its lock, then the stages in order: prepare data → plan → build
network → fit → write the bundle."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

from masksmith import __version__
from masksmith.config import TrainConfig, UserConfig, config_to_yaml, resolve_user_config, user_config_from
from masksmith.cpu_memory import keep_freed_memory
from masksmith.data.limits import image_pixel_limit
from masksmith.errors import ConfigError
from masksmith.fileio import folder_lock, refuse_overwrite, remove_stale_temps, require_writable, write_text_atomic
from masksmith.runlog import RunLog
from masksmith.training.fit import fit
from masksmith.training.network import build_network, check_names, model_arguments
from masksmith.parallel import Launch, check_launch, detect_launch, processes
from masksmith.training.init_bundle import check_init_classes, load_init_weights, with_init
from masksmith.training.handoff import Decision, Leader, describe, follower_config, leading, receive
from masksmith.training.outputs import TrainResult, train_result, write_bundle, write_results
from masksmith.training.planning import check_and_plan
from masksmith.training.prepare import (FixedSplit, PreparedData, find_pairs, prepare_data, with_dataset_classes,
                                        with_void_class)

if TYPE_CHECKING:
    from masksmith.training.cross_validation import CrossValidationResult


def train(data: str | Path | None = None, *, config: str | Path | TrainConfig | None = None,
          resume: str | Path | None = None, callbacks: Sequence[Callback] = (),
          **options: Any) -> TrainResult | CrossValidationResult:
    """Train a model: `masksmith.train("data/", epochs=20, size=256)`; options are TrainConfig fields.
    With `folds=K`: k-fold cross-validation, one model per fold (a CrossValidationResult).

    `config`: a YAML file or a TrainConfig (its constructor's fields count as given, as keyword options do).
    `callbacks`: extra Lightning callbacks (profiling, custom logging), added to masksmith's own.
    """
    keep_freed_memory()  # before the plan times its steps: they run as training will
    user, run_dir = user_options(data, config, resume, options)
    launch = detect_launch()
    check_launch(user.config, launch)  # every process of a launch fails alike here, before reading data
    if not launch.leader:
        return follow(launch, user.config, callbacks)
    # Made only now that the config is valid, and proven writable before any data is read.
    require_writable(run_dir)
    from masksmith.training.cross_validation import is_fold_folder, train_folds  # it runs these stages

    if user.config.folds is not None or (resume is not None and is_fold_folder(run_dir)):
        # k-fold cross-validation: a layer above the stages, one run per fold (a fold resumes with its CV run).
        return train_folds(user, run_dir, resume=resume is not None, callbacks=callbacks)
    # One training per run folder at a time: a second one fails here, before reading any data, instead of
    # mixing its checkpoints and logs into the first one's. The lock goes with the process, even on a crash.
    # Only rank 0 takes it: the other processes of the run (torchrun, SLURM) wait for its decision instead.
    with leading(user.config, launch) as leader, folder_lock(run_dir, kind="training"):
        if resume is None and (run_dir / "checkpoints").exists():
            # Training again into a finished run would overwrite its model and mix its logs.
            raise ConfigError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                              "or choose another --out")
        # What a killed run was writing; no one else writes here while we hold the lock.
        remove_stale_temps(run_dir, run_dir / "checkpoints")
        user = with_dataset_classes(user)
        with image_pixel_limit(user.config.max_image_pixels):  # every image read of the run obeys its limit
            return run_stages(user, run_dir, resume=resume is not None, callbacks=callbacks, leader=leader)


def follow(launch: Launch, config: TrainConfig, callbacks: Sequence[Callback]) -> TrainResult:
    """A process other than rank 0: rank 0's run folder and resolved config, then training alongside it,
    writing nothing (rank 0 writes the checkpoints, logs, curves and the bundle)."""
    decision = receive(config, launch)
    user = follower_config(decision.user)
    with image_pixel_limit(user.config.max_image_pixels):
        return run_stages(user, decision.run_dir, resume=decision.resume, callbacks=callbacks, launch=launch)


def user_options(data: str | Path | None, config: str | Path | TrainConfig | None, resume: str | Path | None,
                 options: dict[str, Any]) -> tuple[UserConfig, Path]:
    """The validated config with the names of the options given, and the run folder it trains into."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir}: not a run folder to resume (no config.yaml)")
        user = resolve_user_config(run_dir / "config.yaml", **options)
    else:
        overrides = {**options, "data": str(data) if data is not None else None}
        if isinstance(config, TrainConfig):
            user = user_config_from(config, **overrides)
        else:
            user = resolve_user_config(config, **overrides)
        user = with_init(user)  # --init: the bundle's network options, before anything plans around them
        run_dir = next_run_dir(user.config.out)
        if user.config.init is not None:
            refuse_overwrite([user.config.init], [run_dir / "model.msb"])
    return user.with_values({"out": str(run_dir)}), run_dir


def next_run_dir(out: str | None, base: Path = Path("runs")) -> Path:
    """The run folder: `out` as given, or runs/train, runs/train2, ... (the first that does not exist)."""
    if out:
        return Path(out)
    candidate, number = base / "train", 1
    while candidate.exists():
        number += 1
        candidate = base / f"train{number}"
    return candidate


def quiet_lightning() -> None:
    """Our own log says what matters; Lightning's start-up chatter and tips would bury it."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # expected when resuming
    # The validation scores are computed from counts summed over the processes, the same on each of them.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level.*")


def record_run(user: UserConfig, data: PreparedData, run_dir: Path) -> None:
    """RUN/config.yaml (the resolved config, to repeat the run) and RUN/split.json (the pairs used)."""
    header = (f"masksmith {__version__} training config (resolved). Repeat this run with:\n"
              f"  masksmith train --config {run_dir / 'config.yaml'}")
    write_text_atomic(run_dir / "config.yaml", config_to_yaml(user.config, header))
    write_text_atomic(run_dir / "split.json", json.dumps(
        {**data.split, "train": [s.name for s in data.train]}, indent=1))


def run_stages(user: UserConfig, run_dir: Path, *, resume: bool, callbacks: Sequence[Callback] = (),
               fixed_split: FixedSplit | None = None, launch: Launch = Launch(),
               leader: Leader | None = None) -> TrainResult:
    """The stages of a run, each reading the config the previous one left (the plan fills options);
    `fixed_split` replaces the split of the data (a cross-validation fold's). Rank 0 (`leader`) plans, writes
    and hands its decision to the other processes; they (`launch.rank` > 0) train with it and write nothing."""
    started = time.perf_counter()
    quiet_lightning()
    log = RunLog(run_dir / "train.log" if launch.leader else None, quiet=user.config.quiet)
    check_names(user.config)  # an unknown name fails now, not after the data has been read
    user = with_void_class(user, log)
    L.seed_everything(user.config.seed, workers=True, verbose=False)
    planning = user.config.auto and not resume and launch.leader  # the others receive rank 0's plan in its config
    # The data is discovered once in the run: the plan's check and the split read the same discovery, and
    # validation does not read again the pairs the check read cleanly.
    found = find_pairs(user.config) if planning or fixed_split is None else None
    checked = None
    if planning:
        assert found is not None
        user, checked = check_and_plan(user, run_dir, log, found)
    arguments = model_arguments(user.config)  # the plan may have chosen an encoder and its weights
    data = prepare_data(user, arguments, log, fixed_split, found=found, checked=checked)
    if user.config.init is not None:
        check_init_classes(user.config.init, data.class_names)
    if data.normalization_from != "config":
        user = user.with_values({"mean": data.mean, "std": data.std})
    config = user.config
    if launch.leader:
        record_run(user, data, run_dir)
        if leader is not None:
            leader.publish(Decision(run_dir, resume, user))
    network = build_network(config, arguments, data.channels, data.num_classes, log)
    if config.init is not None and not resume:  # a resumed run continues from its own checkpoint
        load_init_weights(network, config.init, log)
    log.info(f"model {config.model} ({sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters); "
             f"run folder {run_dir}")
    if processes(config) > 1:
        log.info(f"training on {describe(launch, config)}; rank 0 writes the run folder")
    outcome = fit(network, config, data, run_dir, resume=resume, callbacks=callbacks, launch=launch)
    if not launch.leader:
        return train_result(outcome, config, run_dir, run_dir / "model.msb", time.perf_counter() - started)
    bundle = write_bundle(network, config, arguments, data, run_dir)
    result = write_results(outcome, config, run_dir, bundle, time.perf_counter() - started)
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    kept = (f"kept the last epoch, {result.best_epoch} ({config.monitor} {score})" if config.keep == "last"
            else f"best {config.monitor} {score} at epoch {result.best_epoch}")
    log.info(f"done in {result.seconds / 60:.1f} min: {kept}; model bundle {bundle}")
    log.info(f"predict with: masksmith predict {bundle} IMAGES... --out predictions")
    return result
