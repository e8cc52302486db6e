"""A run's Lightning checkpoints: best.ckpt and last.ckpt in RUN/checkpoints/, written atomically, read weights-only.

A run folder may come from anyone (a shared or downloaded run resumed with --resume), so nothing here
unpickles objects, and every checkpoint path a checkpoint itself names is taken as a file name inside
the run's own checkpoints/ folder, never as a path elsewhere.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from masksmith.core.fileio import atomic_path
from masksmith.errors import ConfigError

# The ModelCheckpoint state entries that hold checkpoint paths (best_k_models: a dict keyed by path).
_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def load_checkpoint(path: str | Path, folder: str | Path) -> dict[str, Any]:
    """Read a checkpoint inside `folder` as tensors and plain values only; ConfigError for anything else."""
    path, folder = Path(path), Path(folder)
    # resolve() follows links, so a checkpoint linked to a file elsewhere is refused too.
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"{path}: checkpoint outside the run's checkpoint folder {folder}; not loading it")
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{path}: the checkpoint holds pickled Python objects, which masksmith never loads "
                          "(they could run code)") from None
    except Exception as error:  # torch raises several types for truncated or foreign files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"{path}: not a masksmith training checkpoint (no state_dict)")
    return checkpoint


def network_weights(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The segmentation network's weights in a checkpoint's state_dict (the module holds it as `network`)."""
    return {k.removeprefix("network."): v for k, v in state_dict.items() if k.startswith("network.")}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temp file and renamed (a kill never leaves half a file), read
    weights-only from the run's checkpoint folder (Trainer.fit(ckpt_path=...) loads through here)."""

    def __init__(self, folder: str | Path):
        super().__init__()
        self.folder = Path(folder)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Whatever Lightning asks for: weights_only=False would unpickle whatever the file holds.
        return load_checkpoint(path, self.folder)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose saved paths are re-read as names inside its own folder, so a resumed run
    that was moved keeps its best score, and a crafted state cannot point the best model elsewhere."""

    @property
    def state_key(self) -> str:
        # Under ModelCheckpoint's own key, so a checkpoint written by Lightning's plain ModelCheckpoint resumes too.
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        folder = Path(str(self.dirpath))
        state = dict(state_dict)

        def here(saved: Any) -> str:
            if not isinstance(saved, str):
                raise ConfigError(f"{folder}: damaged checkpoint state (a checkpoint path is {type(saved).__name__})")
            return str(folder / Path(saved).name) if saved else ""

        for key in _PATH_KEYS:
            if key in state:
                state[key] = here(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {here(saved): score for saved, score in state["best_k_models"].items()}
        # Lightning drops the best score when dirpath changed (a moved run folder), and the first resumed
        # epoch then overwrote a better best.ckpt; the paths are this folder's now, so keep everything.
        state["dirpath"] = self.dirpath
        super().load_state_dict(state)
        if self.monitor and self.best_model_path:
            # Fail now, not after the resumed epochs, if the best checkpoint is gone or holds objects.
            load_checkpoint(self.best_model_path, folder)


def checkpoint_callbacks(folder: Path, monitor: str, mode: Literal["min", "max"]) -> tuple[RunCheckpoint, RunCheckpoint]:
    """best.ckpt (the best `monitor` so far) and last.ckpt (after every epoch), in that order."""
    best = RunCheckpoint(dirpath=folder, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                         auto_insert_metric_name=False, enable_version_counter=False)
    # Lightning's save_last writes last.ckpt only when it also writes a new best (a kill on a plateau lost
    # every epoch since the last improvement); a monitor-less checkpoint is written every epoch. It runs
    # after `best`, so last.ckpt holds the best checkpoint's updated state.
    last = RunCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1,
                         auto_insert_metric_name=False, enable_version_counter=False)
    return best, last
