"""The model bundle: one file with the weights (safetensors) and everything a prediction needs (JSON).

The file is a plain safetensors file whose header metadata holds the JSON under the key
`masksmith`. Loading never unpickles anything, and any safetensors reader can open the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import safe_open
from safetensors.torch import save_file

from masksmith import __version__
from masksmith.errors import BundleError
from masksmith.fileio import atomic_path

FORMAT_NAME = "masksmith-bundle"
FORMAT_VERSION = 1
METADATA_KEY = "masksmith"


class BundleMeta(BaseModel):
    """Everything besides the weights that turns an image into a mask."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    model_options: dict[str, Any]
    in_channels: int
    out_channels: int
    class_names: list[str]
    colors: list[list[int]]
    size: int
    resize: Literal["resize", "random_crop", "center_crop"]
    mean: list[float]
    std: list[float]
    threshold: float = 0.5
    mask_encoding: dict[str, Any]
    ignore_index: int = 255
    split: dict[str, Any] = {}
    masksmith_version: str = __version__

    @property
    def num_classes(self) -> int:
        """Number of classes, background included (2 for binary)."""
        return len(self.class_names)


def save_bundle(path: str | Path, state_dict: dict[str, torch.Tensor], meta: BundleMeta) -> Path:
    """Write weights + metadata to `path` atomically and return the path."""
    path = Path(path)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "meta": meta.model_dump(mode="json")}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(header)})
    return path


def read_meta(path: str | Path) -> BundleMeta:
    """Read only the metadata of a bundle (fast: the weights are not loaded)."""
    return _open(path, load_weights=False)[0]


def load_bundle(path: str | Path) -> tuple[BundleMeta, dict[str, torch.Tensor]]:
    """Read a bundle's metadata and weights, with a clear BundleError for anything that is not one."""
    meta, weights = _open(path, load_weights=True)
    assert weights is not None
    return meta, weights


def _open(path: str | Path, load_weights: bool) -> tuple[BundleMeta, dict[str, torch.Tensor] | None]:
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such model bundle")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            weights = {key: handle.get_tensor(key) for key in handle.keys()} if load_weights else None
    except Exception as error:  # safetensors raises several types for truncated or foreign files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BundleError(f"{path}: not a readable model bundle ({reason})") from None
    if raw is None:
        raise BundleError(f"{path}: a safetensors file but not a masksmith bundle (no '{METADATA_KEY}' metadata)")
    try:
        header = json.loads(raw)
        if header.get("format") != FORMAT_NAME:
            raise ValueError("wrong format name")
        if header.get("format_version", 0) > FORMAT_VERSION:
            raise BundleError(
                f"{path}: bundle format {header['format_version']} is newer than this masksmith "
                f"({__version__}) reads; upgrade masksmith")
        meta = BundleMeta(**header["meta"])
    except BundleError:
        raise
    except (ValueError, KeyError, TypeError, ValidationError) as error:
        reason = str(error).splitlines()[0]
        raise BundleError(f"{path}: damaged masksmith metadata ({reason})") from None
    return meta, weights
