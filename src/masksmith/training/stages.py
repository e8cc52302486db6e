"""The stages of one training run, in order: prepare data → plan → build network → fit → write the bundle."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

from masksmith.config import UserConfig, config_to_yaml
from masksmith.core.fileio import write_text_atomic
from masksmith.core.runlog import RunLog
from masksmith.core.version import __version__
from masksmith.planning.stage import check_and_plan
from masksmith.training.fit import fit
from masksmith.training.handoff import Decision, Leader, describe
from masksmith.training.init_bundle import check_init_classes, load_init_weights
from masksmith.training.network import build_network, check_names, model_arguments
from masksmith.training.outputs import TrainResult, train_result, write_bundle, write_results
from masksmith.training.parallel import Launch, processes
from masksmith.training.prepare import FixedSplit, PreparedData, find_pairs, prepare_data, with_void_class


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
