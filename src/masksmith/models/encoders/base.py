"""What every built-in encoder shares: the feature-stage contract, TF "SAME" padding, first-conv adaptation,
and turning a published ImageNet checkpoint into the encoder's own state dict."""

from __future__ import annotations

import logging
import math

import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger("masksmith")

# The five feature maps every encoder returns, at these strides (a U-Net decoder joins them as skips).
REDUCTIONS = (2, 4, 8, 16, 32)
# num_batches_tracked carries no shape information worth checking; every BatchNorm has one.
_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


class SamePad(nn.Module):
    """TensorFlow's "SAME" padding for a strided convolution: output ceil(H / stride), extra pixel at bottom/right.

    PyTorch pads symmetrically; TF puts the odd pixel of a stride-2 convolution's padding at the end. Weights
    trained in TF see the image shifted by one pixel under symmetric padding, which changes every feature map.
    """

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        if kernel < stride:
            raise ValueError(f"SAME padding needs kernel >= stride, got {kernel} and {stride}")
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        """`x` padded so that a kernel x kernel convolution at this stride gives ceil(H / stride) rows."""
        # Total padding (ceil(n / s) - 1) * s + k - n, written without ceil: k - s + (-n mod s).
        pad_h = self.kernel - self.stride + (-x.shape[-2]) % self.stride
        pad_w = self.kernel - self.stride + (-x.shape[-1]) % self.stride
        return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            padding: int | None = None, eps: float = 1e-5, act: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU6 (or no activation) as one Sequential, the layout BN folding expects."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2 if padding is None else padding,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, eps=eps),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


def init_encoder(module: nn.Module) -> None:
    """He-normal init with the fan-out of each filter group (depthwise filters have k*k outputs), unit BatchNorm."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            kernel_h, kernel_w = layer.kernel_size
            fan_out = kernel_h * kernel_w * layer.out_channels // layer.groups
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def adapt_input_weight(weight: Tensor, channels: int) -> Tensor:
    """First-conv weights for `channels` inputs made from RGB ones: summed for 1, else cycled and rescaled.

    A gray image seen as equal R, G and B gives exactly the RGB filter's response to the summed filter. For
    other counts, channel i takes RGB filter i mod 3 and all are scaled by 3 / channels, so inputs with
    RGB-like statistics keep the activation scale the following BatchNorm was trained for.
    """
    base = weight.shape[1]
    if channels == base:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-channels // base)
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (base / channels)


def cycle_channels(values: tuple[float, ...], channels: int) -> list[float]:
    """Per-channel statistics matching `adapt_input_weight`: the mean for 1 channel, else RGB cycled."""
    if channels == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(channels)]


def batchnorm_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    """The state-dict entries (name -> shape) of one BatchNorm2d under `prefix`."""
    shapes = {f"{prefix}.{name}": (channels,) for name in _BN_BUFFERS}
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


class Encoder(nn.Module):
    """An ImageNet backbone cut before its classifier: forward returns feature maps at strides 2, 4, 8, 16, 32.

    Subclasses set `out_channels` (one per stride), `stem_key` (the first conv's weight in their own naming)
    and implement `classifier_shapes` and `published_keys` for the checkpoint format they load.
    """

    out_channels: tuple[int, ...]
    reductions: tuple[int, ...] = REDUCTIONS
    stem_key: str
    in_channels: int

    def classifier_shapes(self) -> dict[str, tuple[int, ...]]:
        """The checkpoint's classification-only tensors (name -> shape), which the encoder has no use for."""
        raise NotImplementedError

    def is_published_format(self, state: dict[str, Tensor]) -> bool:
        """Whether `state` is keyed as the published checkpoint (not as this encoder's own state dict)."""
        raise NotImplementedError

    def published_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state` (published naming, classifier removed) renamed to this encoder's own keys."""
        return dict(state)

    def from_published(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """A published checkpoint as this encoder's state dict, and the classifier keys it dropped.

        Only the classifier tensors are dropped, and only where the name and shape are the expected ones:
        anything else stays in and is reported by the strict load (a different variant, another network).
        """
        classifier = self.classifier_shapes()
        dropped = sorted(key for key, value in state.items()
                         if key in classifier and tuple(value.shape) == classifier[key])
        kept = self.published_keys({key: value for key, value in state.items() if key not in dropped})
        stem = kept.get(self.stem_key)
        if stem is not None and stem.dim() == 4 and stem.shape[1] == 3 and self.in_channels != 3:
            kept[self.stem_key] = adapt_input_weight(stem, self.in_channels)
            logger.info("first convolution adapted from RGB to %d input channels", self.in_channels)
        return kept, dropped

    def layers(self) -> list[nn.Module]:
        """The encoder's layers in the order forward runs them (the stem first)."""
        raise NotImplementedError

    def feature_layers(self) -> tuple[int, ...]:
        """For each feature map (stride 2 ... 32): the index in `layers()` of the layer that outputs it."""
        raise NotImplementedError

    def stage_modules(self, count: int) -> list[nn.Module]:
        """The layers that compute the first `count` feature maps (strides 2 ... 2**count), the stem included.

        Freezing them (--frozen-stages) keeps their weights and BatchNorm statistics fixed, and the backward
        pass stops before them: no gradient is computed at the highest resolutions.
        """
        if not 0 <= count <= len(self.reductions):
            raise ValueError(f"an encoder has {len(self.reductions)} stages; cannot take the first {count}")
        return self.layers()[: self.feature_layers()[count - 1] + 1] if count else []

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - each encoder has its own
        """Feature maps at strides 2, 4, 8, 16 and 32."""
        raise NotImplementedError

