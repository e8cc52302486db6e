"""MobileNetV2 (Sandler et al., 2018) as an encoder, laid out so torchvision's ImageNet checkpoint loads as is.

The module names (`features.N.conv.M...`) are the published checkpoint's own: no key mapping is needed,
only the classifier (the 1x1 head convolution `features.18` and `classifier.1`) is left out.
"""

from __future__ import annotations

from torch import Tensor, nn

from masksmith.models.encoders.base import Encoder, batchnorm_shapes, conv_bn, init_encoder

# (expansion, output channels, repeats, first stride) of the inverted-residual stages, width 1.0.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))
STEM_CHANNELS, HEAD_CHANNELS, CLASSES = 32, 1280, 1000
# Indices in `features` after which the stride 2, 4, 8, 16 and 32 maps are taken (the last block there).
TAPS = (1, 3, 6, 13, 17)


class InvertedResidual(nn.Module):
    """1x1 expansion (absent at expansion 1), depthwise 3x3, linear 1x1 projection; identity skip at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = [conv_bn(in_channels, hidden)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        """The block's output for `x`."""
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(Encoder):
    """MobileNetV2 backbone (width 1.0); features: 16, 24, 32, 96 and 320 channels at stride 2 ... 32."""

    stem_key = "features.0.0.weight"
    out_channels = (16, 24, 32, 96, 320)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = [conv_bn(in_channels, STEM_CHANNELS, 3, 2)]
        channels = STEM_CHANNELS
        for expansion, out, repeats, stride in STAGES:
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if index == 0 else 1, expansion))
                channels = out
        self.features = nn.Sequential(*layers)
        init_encoder(self)

    def layers(self) -> list[nn.Module]:
        """The stem and the inverted residual blocks, in forward order."""
        return list(self.features)

    def feature_layers(self) -> tuple[int, ...]:
        """The blocks whose outputs are the feature maps."""
        return TAPS

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps at strides 2, 4, 8, 16 and 32."""
        features = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                features.append(x)
        return features

    def classifier_shapes(self) -> dict[str, tuple[int, ...]]:
        """torchvision's head: the 1x1 convolution to 1280 channels, its BatchNorm, the 1000-class layer."""
        return {"features.18.0.weight": (HEAD_CHANNELS, self.out_channels[-1], 1, 1),
                **batchnorm_shapes("features.18.1", HEAD_CHANNELS),
                "classifier.1.weight": (CLASSES, HEAD_CHANNELS), "classifier.1.bias": (CLASSES,)}

    def is_published_format(self, state: dict[str, Tensor]) -> bool:
        """torchvision naming, which is this module's own too (so the classifier is dropped from either)."""
        return "features.0.0.weight" in state
