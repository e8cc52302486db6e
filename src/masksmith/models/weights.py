"""Local weights files (.safetensors/.msb, or tensors-only .pth/.pt/.bin/.ckpt) loaded into any network, whole
or its encoder, with every key that does not fit reported; what the U-Nets and the smp models load."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from masksmith.errors import ConfigError

logger = logging.getLogger("masksmith")

WEIGHT_SUFFIXES = (".safetensors", ".msb", ".pth", ".pt", ".bin", ".ckpt")
# Wrappers that training frameworks put around a state dict or in front of its keys.
_WRAPPER_KEYS = ("state_dict", "model", "network", "module")
_KEY_PREFIXES = ("model.", "network.", "module.", "_orig_mod.")


def is_weights_file(value: str | None) -> bool:
    """Whether a `weights` value names a local file (rather than a hub name such as 'imagenet')."""
    if not value:
        return False
    return Path(value).suffix.lower() in WEIGHT_SUFFIXES or Path(value).exists()


@dataclass
class WeightsReport:
    """What `load_weights` did: which part it loaded and the keys that did not fit."""

    path: str
    part: Literal["model", "encoder"]
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    # Classification-only tensors of a published backbone checkpoint that the encoder has no place for.
    dropped: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every key of the target and the file matched in name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """The unmatched keys as one line (at most 8 names per kind)."""
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape-mismatched", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors/.msb file or a .pth/.pt/.bin/.ckpt file (tensors only: never a full unpickle)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such weights file")
    try:
        if path.suffix.lower() in (".safetensors", ".msb"):
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for foreign or pickled files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: not a readable weights file ({reason[:200]})") from None
    # Unwrap {"state_dict": {...}} (Lightning) or {"model": {...}} until the tensors show.
    while isinstance(state, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: holds no state dict (a mapping of parameter names to tensors)")
    return _strip_prefixes(state)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix ('model.', 'network.', ...) that every key carries."""
    changed = True
    while changed:
        changed = False
        for prefix in _KEY_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def _target(model: nn.Module, state: dict[str, torch.Tensor], part: str) -> tuple[str, nn.Module, dict[str, torch.Tensor]]:
    """Decide whether `state` is for the whole model or its encoder, and key it for that module."""
    encoder = getattr(model, "encoder", None)
    encoder = encoder if isinstance(encoder, nn.Module) else None
    if part not in ("auto", "model", "encoder"):
        raise ConfigError(f"weights part must be auto, model or encoder, got {part!r}")
    if part == "encoder" and encoder is None:
        raise ConfigError(f"{type(model).__name__} has no encoder to load weights into")
    all_encoder_keys = encoder is not None and all(key.startswith("encoder.") for key in state)
    if part == "auto" and encoder is not None:
        # A file of "encoder.*" keys was saved from a whole model's encoder; otherwise pick the part
        # whose parameter names the file covers best.
        if all_encoder_keys:
            part = "encoder"
        else:
            model_hits = len(set(state) & set(model.state_dict()))
            encoder_hits = len(set(state) & set(encoder.state_dict()))
            part = "encoder" if encoder_hits > model_hits else "model"
    elif part == "auto":
        part = "model"
    if part == "encoder":
        if all_encoder_keys:
            state = {key[len("encoder."):]: value for key, value in state.items()}
        return "encoder", encoder, state
    return "model", model, state


def load_weights(model: nn.Module, path: str | Path, part: Literal["auto", "model", "encoder"] = "auto",
                 strict: bool = True) -> WeightsReport:
    """Load a local weights file into `model` (or its encoder); unmatched keys raise (strict) or are logged."""
    state = read_state_dict(path)
    dropped: list[str] = []
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        # Models with built-in encoders rename a published backbone checkpoint to their own keys first.
        state, dropped = adapt(state)
    part_name, target, state = _target(model, state, part)
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{key} (file {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
                        for key in set(state) & set(expected) if state[key].shape != expected[key].shape)
    fitting = {key: value for key, value in state.items()
               if key in expected and value.shape == expected[key].shape}
    report = WeightsReport(str(path), part_name, len(fitting), missing, unexpected, mismatched,  # type: ignore[arg-type]
                           dropped)
    if not report.clean:
        message = f"{path}: weights do not match the {part_name} ({report.problems()})"
        if strict:
            raise ConfigError(message)
        logger.warning(message + "; loading the %d matching tensors", len(fitting))
    target.load_state_dict(fitting, strict=False)
    return report
