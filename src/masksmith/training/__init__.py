"""Training as stages: prepare data → plan → build network → fit → write the bundle (`masksmith.train`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from masksmith.training.outputs import TrainResult
    from masksmith.training.run import next_run_dir, train

__all__ = ["TrainResult", "next_run_dir", "train"]

# Imported on first use: the CLI reads the loss and augmentation registries (training.losses, training.augment)
# for every command's help, and must not load Lightning for `predict` or `serve`.
_LAZY = {"TrainResult": "masksmith.training.outputs", "next_run_dir": "masksmith.training.run",
         "train": "masksmith.training.run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'masksmith.training' has no attribute {name!r}")
