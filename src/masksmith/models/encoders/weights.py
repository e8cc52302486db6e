"""Where each encoder's published ImageNet checkpoint is installed: a pip package's data file, found without
importing the package, or (MobileNetV2) torchvision's own download cache."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from masksmith.errors import ConfigError


@dataclass(frozen=True)
class WeightsSource:
    """A checkpoint file inside an installed package, and how to get that package."""

    module: str  # import name of the package holding the file
    folder: str  # the file's folder inside the package
    pattern: str  # the file's name (a glob: the packages put a hash in it)
    install_hint: str  # what to run when the package is missing
    hub_file: str | None = None  # the name torchvision's cache gives the same file, when it has one


def package_folder(module: str) -> Path | None:
    """The folder of installed package `module`, located without importing it (None when absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def torch_hub_checkpoints() -> Path:
    """torch.hub's checkpoint cache ($TORCH_HOME/hub/checkpoints), where torchvision keeps its downloads."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def candidates(source: WeightsSource) -> list[Path]:
    """The places `source`'s file may be, in the order they are tried."""
    places = []
    folder = package_folder(source.module)
    if folder is not None:
        places += sorted((folder / source.folder).glob(source.pattern))
    if source.hub_file:
        places.append(torch_hub_checkpoints() / source.hub_file)
    return places


def find_weights(encoder: str, source: WeightsSource) -> Path:
    """The installed ImageNet checkpoint of `encoder`, or a ConfigError saying how to install it."""
    for path in candidates(source):
        if path.is_file():
            return path
    looked = f"package {source.module}" + (f" and {torch_hub_checkpoints() / source.hub_file}"
                                           if source.hub_file else "")
    raise ConfigError(f"encoder {encoder!r}: no ImageNet weights installed (looked in {looked}); "
                      f"{source.install_hint}")

