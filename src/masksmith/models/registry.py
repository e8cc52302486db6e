"""The model registry and the one factory every caller (engine, bundle, CLI) builds models through."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from masksmith.core.registry import Registry
from masksmith.errors import ConfigError

MODELS = Registry("model")

# Every builder takes these two positionally-meaningful arguments; they are not "options".
_FIXED_ARGUMENTS = ("in_channels", "out_channels")


def model_options(name: str) -> dict[str, Any]:
    """Return the options model `name` accepts, mapped to their defaults (read from its builder)."""
    builder = MODELS.get(name)
    options: dict[str, Any] = {}
    for parameter in inspect.signature(builder).parameters.values():
        if parameter.name in _FIXED_ARGUMENTS:
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        # A builder option without a default would make `build_model(name, c_in, c_out)` fail,
        # so registering one is a programming error, not a user error.
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(f"model {name!r}: option {parameter.name!r} has no default")
        options[parameter.name] = parameter.default
    return options


def build_model(name: str, in_channels: int, out_channels: int, **options: Any) -> nn.Module:
    """Build model `name` mapping `in_channels` image channels to `out_channels` logit channels."""
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(f"{key}={value!r}" for key, value in valid.items()) or "(none)"
        raise ConfigError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; valid options: {listed}"
        )
    for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        # bool is an int subclass; `True` channels is always a config slip.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {name!r}: {label} must be a positive integer, got {value!r}")
    model = MODELS.get(name)(in_channels=in_channels, out_channels=out_channels, **options)
    # The resolved architecture (defaults filled in) travels with the model so a bundle can
    # record exactly what to rebuild, even when the config left options out.
    model.masksmith_arch = {
        "name": name,
        "in_channels": in_channels,
        "out_channels": out_channels,
        # A network whose options resolve differently from the builder's defaults says how it really runs.
        "options": {**valid, **options, **getattr(model, "resolved_options", {})},
    }
    return model
