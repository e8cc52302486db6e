"""`masksmith.train`: the run folder and its lock, then the stages (stages.py), or one run of them per fold
(cross_validation.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.callbacks import Callback

from masksmith.config import TrainConfig, UserConfig, resolve_user_config, user_config_from
from masksmith.core.cpu_memory import keep_freed_memory
from masksmith.core.fileio import folder_lock, refuse_overwrite, remove_stale_temps, require_writable
from masksmith.data.limits import image_pixel_limit
from masksmith.errors import ConfigError
from masksmith.training.cross_validation import CrossValidationResult, is_fold_folder, train_folds
from masksmith.training.handoff import follower_config, leading, receive
from masksmith.training.init_bundle import with_init
from masksmith.training.outputs import TrainResult
from masksmith.training.parallel import Launch, check_launch, detect_launch
from masksmith.training.prepare import with_dataset_classes
from masksmith.training.stages import run_stages


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
