"""`train --init RUN/model.msb`: fine-tune from a model bundle (the label -> train -> label loop).

The bundle's network is the run's (architecture, its options, input size, channels, normalization, head), and
so is its ignore value, unless the user gave those options; its weights are loaded before the first step; its classes must be
the data's, name for name, or the run is refused before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from masksmith.bundle import BundleMeta, load_bundle, read_meta
from masksmith.config import UserConfig
from masksmith.core.runlog import RunLog
from masksmith.errors import BundleError, ConfigError

# The options a bundle fixes, each taken from it unless the user gave it.
TAKEN = ("model", "model_options", "encoder", "weights", "size", "resize", "channels", "mean", "std",
         "binary_head", "threshold", "ignore_index")


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
    return f"[{shown}]"


def init_meta(path: str | Path) -> BundleMeta:
    """The bundle's metadata (its weights are not read); a one-line BundleError for anything that is not one."""
    path = Path(path)
    if path.is_dir():
        raise BundleError(f"--init {path}: is a folder; give the bundle file, e.g. {path / 'model.msb'}")
    return read_meta(path)


def with_init(user: UserConfig) -> UserConfig:
    """The run's config with the bundle's network options where the user gave none; they count as given,
    so the plan fills only the rest (batch, learning rate, loss, epochs, ...)."""
    config = user.config
    if config.init is None:
        return user
    meta = init_meta(config.init)
    from_bundle: dict[str, Any] = {
        "model": meta.model, "model_options": dict(meta.model_options),
        # The encoder (and its weights file) are part of model_options; the bundle's weights replace any.
        "encoder": None, "weights": None,
        "size": meta.size, "resize": meta.resize, "channels": meta.in_channels, "mean": list(meta.mean),
        "std": list(meta.std), "binary_head": "sigmoid" if meta.out_channels == 1 else "softmax",
        "threshold": meta.threshold,
        # The data's void as the bundle was trained with it: a void class named in the class list is left out
        # again (data.classes.named_void), so the classes match the bundle's.
        "ignore_index": meta.ignore_index,
    }
    taken = {name: value for name, value in from_bundle.items() if name not in user.given}
    updated = user.with_values(taken, source=f"--init {config.init}")
    return UserConfig(updated.config, user.given | frozenset(taken))


def check_init_classes(path: str | Path, class_names: Sequence[str]) -> None:
    """ConfigError naming both lists when the bundle's classes are not the data's."""
    meta = init_meta(path)
    if list(meta.class_names) != list(class_names):
        raise ConfigError(f"--init {path}: the bundle's classes {_names(meta.class_names)} are not the data's "
                          f"{_names(list(class_names))}; fine-tune on data with the same classes, in the same order")


def load_init_weights(network: torch.nn.Module, path: str | Path, log: RunLog) -> None:
    """Load the bundle's weights into the run's network; a one-line BundleError when they do not fit it."""
    _, weights = load_bundle(path)
    expected = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [name for name in expected if name in found and expected[name] != found[name]]
    if missing or unexpected or wrong:
        details = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + (
            [f"{name} is {list(found[name])} in the bundle but {list(expected[name])} in this run's network"
             for name in wrong[:2]])
        raise BundleError(f"--init {path}: its weights do not fit the network of this run ({'; '.join(details)}); "
                          "leave the architecture options to the bundle")
    network.load_state_dict(weights)
    log.info(f"weights: all {len(weights)} tensors from --init {path}")
