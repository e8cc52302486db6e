"""The pieces the from-scratch networks share: option checks, initialisation, the double convolution."""

from __future__ import annotations

from torch import nn

from masksmith.errors import ConfigError

UPSAMPLING_MODES = ("transpose", "bilinear")


def check_architecture_options(
    model: str, depth: int, base_channels: int, upsampling: str, dropout: float,
    upsampling_modes: tuple[str, ...] = UPSAMPLING_MODES,
) -> None:
    """Raise ConfigError naming `model` when one of the shared encoder-decoder options is invalid."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"model {model!r}: depth must be an integer >= 1, got {depth!r}")
    if isinstance(base_channels, bool) or not isinstance(base_channels, int) or base_channels < 1:
        raise ConfigError(
            f"model {model!r}: base_channels must be an integer >= 1, got {base_channels!r}"
        )
    if upsampling not in upsampling_modes:
        raise ConfigError(
            f"model {model!r}: upsampling must be one of {', '.join(upsampling_modes)}; "
            f"got {upsampling!r}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model {model!r}: dropout must be in [0, 1), got {dropout!r}")


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions and unit BatchNorm: the usual start for ReLU networks."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions (padding 1), each followed by BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        # No conv bias: the BatchNorm right after it has its own shift.
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
