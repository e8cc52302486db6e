"""Stage 3, build the network: the names in the config checked up front, the builder's options, the
network with its initial weights."""

from __future__ import annotations

from typing import Any

import torch

from masksmith.config import TrainConfig
from masksmith.core.registry import did_you_mean
from masksmith.core.runlog import RunLog
from masksmith.errors import ConfigError
from masksmith.models import MODELS, build_model, model_options
from masksmith.models.smp import import_smp
from masksmith.models.weights import is_weights_file, load_weights
from masksmith.training.augment import build_augmentation
from masksmith.training.losses import parse_loss_spec


def check_names(config: TrainConfig) -> dict[str, Any]:
    """Fail on an unknown model, encoder, loss or augmentation name now, before any data is read (each with
    the closest valid name); returns the builder's options. `monitor` is checked by TrainConfig itself."""
    MODELS.get(config.model)
    parse_loss_spec(config.loss)
    # Built once for its errors (unknown preset or transform); the run builds its own for the real channels.
    build_augmentation(config.augment, ignore_index=config.ignore_index, channels=config.channels or 3)
    return model_arguments(config)


def model_arguments(config: TrainConfig) -> dict[str, Any]:
    """The builder options: model_options plus the top-level `encoder` and (for smp models) `weights`."""
    arguments = dict(config.model_options)
    accepted = model_options(config.model)
    for name in ("encoder", "weights"):
        value = getattr(config, name)
        if value is None:
            continue
        if name in arguments and arguments[name] != value:
            raise ConfigError(f"{name} is given twice, as {value!r} and as model option {arguments[name]!r}")
        if name in accepted:
            arguments[name] = value
        elif name == "encoder":
            raise ConfigError(f"model {config.model!r} takes no encoder; encoders go with smp models, "
                              "e.g. --model smp.Unet --encoder resnet34")
        elif not is_weights_file(value):
            raise ConfigError(f"model {config.model!r}: weights {value!r} is not a local file; hub weights "
                              "(imagenet) are for smp encoders, e.g. --model smp.Unet --weights imagenet")
    if config.model == "unet" and arguments.get("encoder") is not None:
        _check_unet_encoder(arguments["encoder"])
    if config.model.startswith("smp."):
        import_smp(config.model)  # the install hint now, before the data check
    return arguments


def _check_unet_encoder(name: Any) -> None:
    from masksmith.models.encoders import ENCODERS, encoder_info

    try:
        encoder_info(name)
    except ConfigError as error:
        raise ConfigError(f"{error}{did_you_mean(name, ENCODERS)}") from None


def bundle_options(arguments: dict[str, Any], network: torch.nn.Module | None = None) -> dict[str, Any]:
    """Model options for the bundle: the architecture only, since the bundle holds the weights itself.

    With `network`, the options it resolved itself (an encoder U-Net's real upsampling mode) are recorded too.
    """
    # Rebuilding from a bundle must neither download hub weights nor need the original weights file.
    options = {**arguments, "weights": None} if "weights" in arguments else dict(arguments)
    return {**options, **getattr(network, "resolved_options", {})}


def output_channels(config: TrainConfig, num_classes: int) -> int:
    """1 for a binary sigmoid head, else one logit per class."""
    return 1 if num_classes == 2 and config.binary_head == "sigmoid" else num_classes


def build_network(config: TrainConfig, arguments: dict[str, Any], channels: int, num_classes: int,
                  log: RunLog) -> torch.nn.Module:
    """The network with its initial weights (random, the builder's pretrained ones, or a local file)."""
    network = build_model(config.model, channels, output_channels(config, num_classes), **arguments)
    if config.weights and "weights" not in arguments:
        # Models without their own `weights` option (the built-in ones) take a local file here.
        report = load_weights(network, config.weights, part="auto")
        log.info(f"weights: {report.loaded} tensors of the {report.part} from {config.weights}")
    elif (report := getattr(network, "masksmith_weights", None)) is not None:  # loaded by the builder (unet)
        log.info(f"weights: {report.loaded} tensors of the {report.part} from {report.path}")
    return network
