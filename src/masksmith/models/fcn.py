"""fcn-lite: a small strided-convolution encoder-decoder without skip connections (fast baseline)."""

from __future__ import annotations

from torch import Tensor, nn

from masksmith.models.base import pad_to_multiple
from masksmith.models.blocks import check_architecture_options, init_weights
from masksmith.models.registry import MODELS


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _up(in_channels: int, out_channels: int, upsampling: str) -> nn.Sequential:
    if upsampling == "transpose":
        # Kernel 4 / stride 2 / padding 1 exactly doubles the size and, unlike kernel 2, lets
        # neighbouring input pixels overlap, so without skips the output is not blocky.
        resize = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
        return nn.Sequential(resize, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        _conv_bn_relu(in_channels, out_channels),
    )


@MODELS.register("fcn-lite")
class FCNLite(nn.Module):
    """Stride-2 conv+BN+ReLU encoder, mirrored upsampling decoder, 1x1 classifier; no skips."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 4,
        base_channels: int = 16,
        upsampling: str = "transpose",
        dropout: float = 0.0,
    ):
        super().__init__()
        check_architecture_options("fcn-lite", depth, base_channels, upsampling, dropout)
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.multiple = 2**depth
        self.stem = _conv_bn_relu(in_channels, widths[0])
        self.down = nn.Sequential(
            *(_conv_bn_relu(widths[level], widths[level + 1], stride=2) for level in range(depth))
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Sequential(
            *(_up(widths[level + 1], widths[level], upsampling) for level in reversed(range(depth)))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        init_weights(self)
        # The classifier keeps PyTorch's smaller default init: He init sized for a following ReLU
        # would start with overconfident logits (|logit| ~ 20) and a huge first loss.
        self.head.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """Logits N x out_channels x H x W for an N x in_channels x H x W image batch."""
        height, width = x.shape[-2:]
        x = self.down(self.stem(pad_to_multiple(x, self.multiple)))
        x = self.up(self.dropout(x))
        return self.head(x)[..., :height, :width]
