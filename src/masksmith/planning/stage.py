"""The plan stage of a training run: check and fingerprint the data, then fill the options the user did not give
(network, input size and batch timed against --max-time by budget.py; the rest by plan.py), written to plan.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from masksmith.config import UserConfig
from masksmith.core.devices import torch_device
from masksmith.core.fileio import write_text_atomic
from masksmith.core.runlog import RunLog
from masksmith.data.check import CheckReport, check_dataset, fingerprint, write_fingerprint
from masksmith.data.classes import class_list_name, proposed_void, read_class_names
from masksmith.data.discover import Discovery
from masksmith.planning.budget import plan_network
from masksmith.planning.plan import PlanChoice, derive_plan, plan_text, plan_to_dict


def plan_choices(data_fingerprint: dict[str, Any], user: UserConfig,
                 device: str) -> tuple[list[PlanChoice], list[dict[str, Any]]]:
    """The planned options (only those not in user.given) and the timed network candidates."""
    config = user.config
    known = {name: getattr(config, name) for name in user.given}
    # The network and input size first (timed against --max-time), then the rest with those as given.
    network, timed = plan_network(data_fingerprint, given=set(user.given), known=known, device=device,
                                  max_time=config.max_time, epochs=config.epochs)
    rest = derive_plan(data_fingerprint, device=device,
                       given={**known, **{choice.option: choice.value for choice in network}})
    return network + rest, timed


def plan_void(user: UserConfig, log: RunLog) -> tuple[UserConfig, list[PlanChoice]]:
    """Without a given ignore value, the one the class list proposes (data.classes' proposed_void: a void name as
    its last class), applied with its choices (the ignore value, and the classes without the void); a class list
    whose void name cannot be proposed gets its reason logged."""
    config = user.config
    if "ignore_index" in user.given:
        return user, []
    names = read_class_names(config.classes)
    proposal = proposed_void(names, class_list_name(config.classes))
    if proposal is None or names is None:
        return user, []
    if proposal.index is None:
        log.info(f"void: {proposal.reason}")
        return user, []
    kept = names[:proposal.index]
    choices = [PlanChoice("ignore_index", proposal.index, proposal.reason),
               PlanChoice("classes", kept, f"{len(kept)} classes: those of {class_list_name(config.classes)} "
                                           f"without the void {names[proposal.index]!r}")]
    return user.with_values({choice.option: choice.value for choice in choices}, source="plan"), choices


def check_and_plan(user: UserConfig, run_dir: Path, log: RunLog, found: Discovery) -> tuple[UserConfig, CheckReport]:
    """Check the data of the run's discovery (`prepare.find_pairs`, which has raised for layout and pairing errors
    in their own words), fingerprint it (fingerprint.json), plan the options not given (plan.json) and apply
    them; also returns the check's report (its labels and cleanly read pairs are not decided or read again)."""
    user, void_choices = plan_void(user, log)  # before the check: the void decides the classes it counts
    config = user.config
    report = check_dataset(config.data, classes=config.classes, foreground=config.foreground,
                           mask_suffix=config.mask_suffix, ignore_index=config.ignore_index,
                           progress=not config.quiet, palette=config.palette,
                           ignore_color=tuple(config.ignore_color) if config.ignore_color else None,
                           discovery=found)
    data_fingerprint = fingerprint(report)
    write_fingerprint(report, run_dir / "fingerprint.json")
    device = torch_device(config.device)
    choices, timed = plan_choices(data_fingerprint, user, device)
    choices = void_choices + choices
    write_text_atomic(run_dir / "plan.json", json.dumps({**plan_to_dict(choices), "timed_candidates": timed}, indent=1))
    log.info("plan (options not given, derived from the data; see plan.json):\n" + plan_text(choices).rstrip())
    return user.with_values({choice.option: choice.value for choice in choices}, source="plan"), report
