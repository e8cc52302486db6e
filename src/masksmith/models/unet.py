"""U-Net (Ronneberger et al., 2015) with BatchNorm, for inputs of any height and width."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from masksmith.errors import ConfigError
from masksmith.models.base import pad_to_multiple
from masksmith.models.blocks import DoubleConv, check_architecture_options, init_weights
from masksmith.models.encoder_unet import build_encoder_unet
from masksmith.models.registry import MODELS
from masksmith.models.weights import is_weights_file, load_weights


class UpBlock(nn.Module):
    """Double the resolution, halve the channels, join the skip connection, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, upsampling: str):
        super().__init__()
        if upsampling == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            # Bilinear has no learned weights and no checkerboard artefacts; the 1x1 conv only
            # matches the channel count of the skip connection.
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Upsample `x` and fuse it with the encoder feature map `skip` of the same size."""
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net: `depth` max-pool downsamplings, channels doubling from `base_channels`, skip joins."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 4,
        base_channels: int = 32,
        upsampling: str = "transpose",
        dropout: float = 0.0,
    ):
        super().__init__()
        check_architecture_options("unet", depth, base_channels, upsampling, dropout)
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.multiple = 2**depth
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[level], widths[level + 1]))
            for level in range(depth)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level], upsampling) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        init_weights(self)
        # The classifier keeps PyTorch's smaller default init: He init sized for a following ReLU
        # would start with overconfident logits (|logit| ~ 20) and a huge first loss.
        self.head.reset_parameters()

    @property
    def encoder(self) -> nn.ModuleList:
        """The contracting path (stem + downsampling blocks): what a freeze-then-fine-tune schedule freezes."""
        # A fresh, unregistered container over registered modules: no duplicate keys in state_dict.
        return nn.ModuleList([self.stem, *self.down])

    def forward(self, x: Tensor) -> Tensor:
        """Logits N x out_channels x H x W for an N x in_channels x H x W image batch."""
        height, width = x.shape[-2:]
        x = self.stem(pad_to_multiple(x, self.multiple))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        x = self.dropout(x)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        return self.head(x)[..., :height, :width]


@MODELS.register("unet")
def unet(in_channels: int, out_channels: int, depth: int = 4, base_channels: int = 32, upsampling: str = "transpose",
         dropout: float = 0.0, encoder: str | None = None, weights: str | None = None,
         decoder_stride: int = 1) -> nn.Module:
    """The classic from-scratch U-Net, or with `encoder` a U-Net decoder over a pretrained ImageNet encoder.

    `weights`: 'imagenet' (the encoder's installed checkpoint) or a local file (whole model or encoder).
    `decoder_stride` (with an encoder): 1, or 2 or 4 to stop the decoder there and upsample its logits.
    """
    if encoder is not None:
        return build_encoder_unet(in_channels, out_channels, encoder, weights, depth, base_channels, upsampling,
                                  dropout, decoder_stride)
    if decoder_stride != 1:
        raise ConfigError(f"model 'unet': decoder_stride={decoder_stride!r} needs a pretrained encoder "
                          "(--encoder); the classic U-Net decodes to full resolution")
    model = UNet(in_channels, out_channels, depth, base_channels, upsampling, dropout)
    if weights:
        if not is_weights_file(weights):
            raise ConfigError(f"model 'unet': weights {weights!r} is not a local file; ImageNet weights need a "
                              "pretrained encoder, e.g. --encoder efficientnet_lite0 --weights imagenet")
        model.masksmith_weights = load_weights(model, weights, part="auto")
    return model
