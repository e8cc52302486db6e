"""What every segmentation network shares: input padding, its input multiple, and the encoder protocol.

A masksmith network takes any H x W: it pads its input at the bottom/right to `network.multiple`
(the product of its downsamplings) and crops the logits back. Tiled prediction aligns tiles to the
same multiple and the ONNX export declares its dynamic sides as multiples of it, so all three read
it through `input_multiple`. A network with an encoder exposes it as `network.encoder` (as smp's
SegmentationModel does); freeze-then-fine-tune training freezes exactly that module.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

# A network that does not declare a multiple does not pad its input, so it takes any size as it is:
# padding it anyway (ONNX backend) or aligning tiles to a coarser grid would change its logits.
DEFAULT_MULTIPLE = 1
MAX_MULTIPLE = 4096  # a network downsampling more than this has no pixels left for any real image
# An encoder that does not say how much it downsamples has the usual five stride-2 stages (smp's depth 5).
DEFAULT_ENCODER_STRIDE = 32


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad an N x C x H x W tensor at the bottom/right so H and W are multiples of `multiple`."""
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    # Reflection keeps image statistics at the border (zeros look like a dark frame to the
    # convolutions), but it needs the pad to be smaller than the side; tiny inputs fall back to zeros.
    mode = "reflect" if pad_h < height and pad_w < width else "constant"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def input_multiple(network: Any) -> int:
    """The multiple a network (or backend) pads its input sides to: its `multiple`, else DEFAULT_MULTIPLE."""
    value = getattr(network, "multiple", None)
    if value is None:
        return DEFAULT_MULTIPLE
    # bool is an int subclass and a float multiple would break the integer tile arithmetic.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MULTIPLE:
        raise ValueError(f"{type(network).__name__}.multiple must be an integer in 1..{MAX_MULTIPLE}, got {value!r}")
    return value


def encoder_of(network: nn.Module) -> nn.Module | None:
    """The network's encoder (`network.encoder`, as smp models and masksmith's U-Nets have), or None."""
    encoder = getattr(network, "encoder", None)
    return encoder if isinstance(encoder, nn.Module) else None


def encoder_stride(encoder: nn.Module) -> int:
    """How much an encoder downsamples: smp's `output_stride`, else masksmith's largest `reductions`."""
    stride = getattr(encoder, "output_stride", None)
    if stride is None and getattr(encoder, "reductions", None):
        stride = max(encoder.reductions)
    return int(stride or DEFAULT_ENCODER_STRIDE)


def batchnorm_eval(module: nn.Module) -> None:
    """Put every BatchNorm layer of `module` in eval mode, so its running statistics stay fixed."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


def set_frozen(module: nn.Module, frozen: bool, training: bool) -> None:
    """Freeze (no gradients, BatchNorm statistics fixed) or unfreeze `module`; `training`: the owner's mode."""
    for parameter in module.parameters():
        parameter.requires_grad_(not frozen)
    if frozen:
        batchnorm_eval(module)
    elif training:
        module.train()
