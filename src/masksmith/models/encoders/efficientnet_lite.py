"""EfficientNet-Lite0/1/2 (Tan & Le, 2019; the "Lite" edge variants of the TF tpu repository) as encoders.

Lite differs from EfficientNet: ReLU6 instead of swish, no squeeze-excitation, the stem (32) and head
(1280) widths and the first and last stages' repeats are not scaled. The published checkpoints come from
TensorFlow, so strided convolutions use TF "SAME" padding and BatchNorm eps is TF's 1e-3.
"""

from __future__ import annotations

import math
import re

from torch import Tensor, nn

from masksmith.models.encoders.base import Encoder, SamePad, batchnorm_shapes, conv_bn, init_encoder

# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# The last stage at each stride 2, 4, 8, 16, 32: their outputs are the encoder's features.
FEATURE_STAGES = (0, 1, 2, 4, 6)
STEM_CHANNELS, HEAD_CHANNELS, CLASSES = 32, 1280, 1000
# (width, depth) multipliers, from the TF repository's efficientnet_lite_params.
VARIANTS = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
TF_BN_EPS = 1e-3

# Published checkpoints use EfficientNet-PyTorch's names (_blocks.N._depthwise_conv ...); these map them
# onto this module's Sequential layout, which lets prediction fold each BatchNorm into its convolution.
_BLOCK_KEYS = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
               "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+?)\.(\w+)$")
_STEM_KEYS = {"_conv_stem": "stem.0", "_bn0": "stem.1"}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 and never more than 10% below the scaled value."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stage_repeats(depth: float) -> list[int]:
    """Blocks per stage: scaled up by `depth`, except the first and last stage (a Lite rule)."""
    last = len(STAGES) - 1
    return [repeats if index in (0, last) else int(math.ceil(depth * repeats))
            for index, (repeats, *_rest) in enumerate(STAGES)]


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise k x k, linear 1x1 projection; identity skip at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = conv_bn(in_channels, hidden, eps=TF_BN_EPS) if expansion != 1 else nn.Identity()
        # Stride 1 with an odd kernel is symmetric under SAME too, so only strided convolutions pad themselves.
        self.pad = SamePad(kernel, stride) if stride > 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden,
                                 padding=0 if stride > 1 else kernel // 2, eps=TF_BN_EPS)
        self.project = conv_bn(hidden, out_channels, eps=TF_BN_EPS, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        """The block's output for `x`."""
        y = self.project(self.depthwise(self.pad(self.expand(x))))
        return x + y if self.residual else y


class EfficientNetLite(Encoder):
    """EfficientNet-Lite backbone; features: the outputs of stages 1, 2, 3, 5 and 7 (stride 2 ... 32)."""

    stem_key = "stem.0.weight"

    def __init__(self, variant: str = "efficientnet_lite0", in_channels: int = 3):
        super().__init__()
        width, depth = VARIANTS[variant]
        self.variant, self.in_channels = variant, in_channels
        self.stem_pad = SamePad(3, 2)
        self.stem = conv_bn(in_channels, STEM_CHANNELS, 3, 2, padding=0, eps=TF_BN_EPS)
        blocks, taps, channels = [], [], STEM_CHANNELS
        for (_, kernel, stride, expansion, out), repeats in zip(STAGES, stage_repeats(depth)):
            out = round_filters(out, width)
            for index in range(repeats):
                blocks.append(MBConv(channels, out, kernel, stride if index == 0 else 1, expansion))
                channels = out
            taps.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self._taps = [taps[stage] for stage in FEATURE_STAGES]
        self.out_channels = tuple(round_filters(STAGES[stage][4], width) for stage in FEATURE_STAGES)
        init_encoder(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps at strides 2, 4, 8, 16 and 32."""
        x = self.stem(self.stem_pad(x))
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self._taps:
                features.append(x)
        return features

    def layers(self) -> list[nn.Module]:
        """Stem padding, stem and the MBConv blocks, in forward order."""
        return [self.stem_pad, self.stem, *self.blocks]

    def feature_layers(self) -> tuple[int, ...]:
        """The blocks that end stages 1, 2, 3, 5 and 7, counted after the stem's two layers."""
        return tuple(2 + tap for tap in self._taps)

    def classifier_shapes(self) -> dict[str, tuple[int, ...]]:
        """The checkpoint's 1x1 head convolution, its BatchNorm and the 1000-class linear layer."""
        last = self.out_channels[-1]
        return {"_conv_head.weight": (HEAD_CHANNELS, last, 1, 1), **batchnorm_shapes("_bn1", HEAD_CHANNELS),
                "_fc.weight": (CLASSES, HEAD_CHANNELS), "_fc.bias": (CLASSES,)}

    def is_published_format(self, state: dict[str, Tensor]) -> bool:
        """EfficientNet-PyTorch naming (`_conv_stem`, `_blocks.N....`)."""
        return any(key.startswith(("_conv_stem.", "_blocks.")) for key in state)

    def published_keys(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename EfficientNet-PyTorch keys to this module's; names it does not know are kept (and reported)."""
        return {published_to_own(key): value for key, value in state.items()}


def published_to_own(key: str) -> str:
    """One EfficientNet-PyTorch state-dict key in this module's naming (unknown keys unchanged)."""
    match = _BLOCK_KEY.match(key)
    if match and match.group(2) in _BLOCK_KEYS:
        return f"blocks.{match.group(1)}.{_BLOCK_KEYS[match.group(2)]}.{match.group(3)}"
    layer, _, rest = key.partition(".")
    return f"{_STEM_KEYS[layer]}.{rest}" if layer in _STEM_KEYS and rest else key
