"""Freezing a network's encoder: the whole encoder for a run's first epochs (freeze_encoder_epochs) and its first
stages for the whole run (frozen_stages), as smp's `freeze_encoder` freezes an smp model's encoder.

Training, the time budget's step timer and the DDP strategy all ask here, so a frozen layer means one thing.
"""

from __future__ import annotations

from torch import nn

from masksmith.models.base import encoder_of, set_frozen
from masksmith.models.encoders import Encoder


def freezes_encoder(freeze_encoder_epochs: int, frozen_stages: int) -> bool:
    """Whether a run freezes any encoder parameter at some point: DDP must then expect parameters without
    gradients."""
    return freeze_encoder_epochs > 0 or frozen_stages > 0


def frozen_stage_layers(network: nn.Module, stages: int) -> list[nn.Module]:
    """The encoder layers `stages` freezes for the whole run: the first stages of masksmith's pretrained encoders
    (other encoders have no stages to freeze: empty)."""
    encoder = encoder_of(network)
    if not stages or not isinstance(encoder, Encoder):
        return []
    return encoder.stage_modules(stages)


def freeze_encoder(network: nn.Module, frozen: bool, *, stages: int = 0, training: bool = True) -> None:
    """Freeze (no gradients, BatchNorm statistics fixed) or unfreeze the network's encoder; its first `stages`
    stages stay frozen either way. `training`: the network's mode (an unfrozen encoder follows it)."""
    encoder = encoder_of(network)
    if encoder is None:
        return
    set_frozen(encoder, frozen, training)
    for layer in frozen_stage_layers(network, stages):
        set_frozen(layer, True, training)
