"""U-Net decoder over one of masksmith's ImageNet encoders: `--model unet --encoder efficientnet_lite0 --weights imagenet`.

The decoder follows smp's U-Net: from the stride-32 features, five times upsample x2, join the encoder's
feature map of that stride, two conv-BN-ReLU; the last step (stride 1) has no skip. Upsampling interpolates
(nearest, or bilinear) instead of transposed convolutions: nothing to learn, no checkerboard, and every
layer left has an int8 kernel in onnxruntime.

`decoder_stride` 2 or 4 stops the decoder early and upsamples its logits bilinearly to the input size, as
FPN, DeepLabV3+ and SegFormer predict at stride 4: the last blocks run at the largest maps, so at 288x192
they cost more than the whole EfficientNet-Lite0 encoder (docs/results.md#planned-decoder-stride).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masksmith.errors import ConfigError
from masksmith.models.base import encoder_stride, pad_to_multiple
from masksmith.models.blocks import DoubleConv, check_architecture_options, init_weights
from masksmith.models.encoders import Encoder, build_encoder, encoder_info, pretrained_weights_file
from masksmith.models.weights import is_weights_file, load_weights

# The classic U-Net's depth default; with an encoder the depth is the encoder's (5 downsamplings).
CLASSIC_DEPTH = 4
# The strides the decoder may stop at: full resolution (smp's U-Net), or 2 or 4 with the logits upsampled.
DECODER_STRIDES = (1, 2, 4)
# The decoder's upsampling modes. "transpose" is accepted too: it is the `unet` builder's default (the classic
# U-Net's), which this decoder, having no transposed convolutions, runs as "nearest".
UPSAMPLING_MODES = ("nearest", "bilinear")


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip feature map (if any), then DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str):
        super().__init__()
        self.mode = mode
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        """`x` at twice its resolution, fused with `skip` (the encoder's map of that size)."""
        x = F.interpolate(x, scale_factor=2.0, mode=self.mode, **({} if self.mode == "nearest" else
                                                                  {"align_corners": False}))
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))


def decoder_widths(base_channels: int) -> list[int]:
    """Channels of the five decoder blocks: 8, 4, 2, 1 and 1/2 times `base_channels` (32: smp's 256 ... 16)."""
    return [base_channels * 8, base_channels * 4, base_channels * 2, base_channels, max(1, base_channels // 2)]


class EncoderUNet(nn.Module):
    """Encoder (feature maps at strides 2 ... 32) + U-Net decoder + 1x1 classifier, for any input size."""

    def __init__(self, encoder: Encoder, out_channels: int, base_channels: int = 32, upsampling: str = "nearest",
                 dropout: float = 0.0, decoder_stride: int = 1):
        super().__init__()
        self.encoder = encoder
        self.upsampling = upsampling
        self.decoder_stride = decoder_stride
        self.multiple = encoder_stride(encoder)  # inputs are padded to it, then cropped back
        widths = decoder_widths(base_channels)
        blocks = len(widths) - DECODER_STRIDES.index(decoder_stride)  # stride 1: all five, 4: the first three
        widths = widths[:blocks]
        skips = [*encoder.out_channels[-2::-1], 0][:blocks]  # strides 16, 8, 4, 2, then none at full resolution
        inputs = [encoder.out_channels[-1], *widths[:-1]]
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o, upsampling) for i, s, o in zip(inputs, skips, widths))
        self.head = nn.Conv2d(widths[-1], out_channels, 1)
        init_weights(self.decoder)
        # The classifier keeps PyTorch's small default init (see UNet): no overconfident first logits.

    @property
    def resolved_options(self) -> dict[str, str]:
        """Builder options as this network really runs them, for the bundle (the default "transpose" is nearest)."""
        return {"upsampling": self.upsampling}

    def forward(self, x: Tensor) -> Tensor:
        """Logits N x out_channels x H x W for an N x in_channels x H x W image batch."""
        height, width = x.shape[-2:]
        features = self.encoder(pad_to_multiple(x, self.multiple))
        x = self.dropout(features[-1])
        skips: list[Tensor | None] = [*features[-2::-1], None]
        for block, skip in zip(self.decoder, skips):
            x = block(x, skip)
        logits = self.head(x)
        if self.decoder_stride > 1:
            logits = F.interpolate(logits, scale_factor=float(self.decoder_stride), mode="bilinear",
                                   align_corners=False)
        return logits[..., :height, :width]

    def adapt_state_dict(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """A published encoder checkpoint keyed for this model ('encoder.' + own names); other files unchanged.

        Called by load_weights before it matches keys; returns the state and the classifier keys dropped.
        """
        if not self.encoder.is_published_format(state):
            return state, []
        own, dropped = self.encoder.from_published(state)
        return {f"encoder.{key}": value for key, value in own.items()}, dropped


def check_decoder_stride(decoder_stride: object) -> None:
    """Raise ConfigError unless `decoder_stride` is one of DECODER_STRIDES."""
    if isinstance(decoder_stride, bool) or decoder_stride not in DECODER_STRIDES:
        raise ConfigError(f"model 'unet': decoder_stride must be one of {', '.join(map(str, DECODER_STRIDES))}, "
                          f"got {decoder_stride!r}")


def build_encoder_unet(in_channels: int, out_channels: int, encoder: str, weights: str | None, depth: int,
                       base_channels: int, upsampling: str, dropout: float, decoder_stride: int = 1) -> EncoderUNet:
    """The `unet` builder's path when an encoder is named: validate, build, load the initial weights."""
    check_architecture_options("unet", depth, base_channels, upsampling, dropout,
                               upsampling_modes=(*UPSAMPLING_MODES, "transpose"))
    check_decoder_stride(decoder_stride)
    encoder_info(encoder)  # an unknown name fails with the list of encoders
    if depth != CLASSIC_DEPTH:
        raise ConfigError(f"model 'unet' with encoder {encoder!r}: depth is set by the encoder (5 downsamplings, "
                          f"stride 32); leave the depth option out (got {depth})")
    # Transposed convolutions are the classic U-Net's default; this decoder interpolates (see the module doc).
    mode = "nearest" if upsampling == "transpose" else upsampling
    model = EncoderUNet(build_encoder(encoder, in_channels), out_channels, base_channels, mode, dropout,
                        decoder_stride)
    if weights:
        path = weights if is_weights_file(weights) else pretrained_weights_file(encoder, weights)
        # Kept on the model so the trainer can log what was loaded (the builder has no run log).
        model.masksmith_weights = load_weights(model, path, part="auto")
    return model
