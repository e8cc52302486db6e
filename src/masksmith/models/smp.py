"""segmentation_models_pytorch architectures in the model registry (`smp.Unet`, ...).

smp is an optional extra (`pip install 'masksmith[smp]'`): nothing here imports it until a model is
built, so masksmith imports fast and works without it. Local weights files load through models/weights.py.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from masksmith.errors import ConfigError
from masksmith.models.base import DEFAULT_ENCODER_STRIDE, encoder_of, encoder_stride, pad_to_multiple
from masksmith.models.registry import MODELS
from masksmith.models.weights import is_weights_file, load_weights

logger = logging.getLogger("masksmith")

# The architectures smp's `create_model` knows (0.3 - 0.5). Listed here, not read from smp, so that
# registering them needs no import; an architecture this smp version lacks fails clearly at build time.
ARCHITECTURES = ("Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
                 "PAN", "UPerNet", "Segformer", "DPT")
DEFAULT_ENCODER = "resnet34"
# Arguments masksmith sets itself (or that would change what the model returns), never options.
_RESERVED = {"encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params", "self"}


def import_smp(name: str = "smp models") -> Any:
    """Import segmentation_models_pytorch, or raise a ConfigError that says how to install it."""
    try:
        import segmentation_models_pytorch
    except ImportError:
        raise ConfigError(f"{name} needs the smp extra: pip install 'masksmith[smp]'") from None
    return segmentation_models_pytorch


def _smp_available() -> bool:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


class SmpBuilder:
    """The registry's builder for one smp architecture; its signature lists the architecture's options."""

    def __init__(self, arch: str):
        self.arch = arch
        self.name = f"smp.{arch}"

    @property
    def __signature__(self) -> inspect.Signature:
        """encoder, weights and the architecture's own keyword options (read from smp when installed)."""
        # model_options() reads the builder's signature; listing smp's own arguments (with their
        # defaults) lets `masksmith models` show them and lets build_model reject misspelt options.
        kind = inspect.Parameter.KEYWORD_ONLY
        parameters = [
            inspect.Parameter("in_channels", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("out_channels", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("encoder", kind, default=DEFAULT_ENCODER),
            inspect.Parameter("weights", kind, default=None),
        ]
        if _smp_available():
            model_class = _model_class(import_smp(self.name), self.arch, self.name, quiet=True)
            if model_class is not None:
                for parameter in inspect.signature(model_class.__init__).parameters.values():
                    if parameter.name in _RESERVED or parameter.default is inspect.Parameter.empty:
                        continue
                    if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                        continue
                    parameters.append(inspect.Parameter(parameter.name, kind, default=parameter.default))
        return inspect.Signature(parameters)

    def __call__(self, in_channels: int, out_channels: int, encoder: str = DEFAULT_ENCODER,
                 weights: str | None = None, **options: Any) -> nn.Module:
        """Build the architecture; `weights` is None, a hub name ('imagenet') or a local file."""
        smp = import_smp(self.name)
        _model_class(smp, self.arch, self.name)
        if not isinstance(encoder, str) or not encoder:
            raise ConfigError(f"model {self.name!r}: encoder must be a name such as resnet34, got {encoder!r}")
        known = smp.encoders.get_encoder_names()
        if encoder not in known and not encoder.startswith("tu-"):
            import difflib

            close = difflib.get_close_matches(encoder, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}" if close else ""
            raise ConfigError(f"model {self.name!r}: unknown encoder {encoder!r}{hint} "
                              f"(smp has {len(known)} encoders, and timm's as tu-NAME)")
        local = is_weights_file(weights)
        hub_weights = None if local else weights
        try:
            model = smp.create_model(self.arch, encoder_name=encoder, encoder_weights=hub_weights,
                                     in_channels=in_channels, classes=out_channels, **options)
        except KeyError as error:
            # smp names an unknown pretrained-weights name (or timm encoder) through a KeyError.
            raise ConfigError(f"model {self.name!r} with encoder {encoder!r}: {error.args[0] if error.args else error}") from None
        except OSError as error:
            # Downloading hub weights is the only I/O here: offline machines end up in this branch.
            raise ConfigError(f"model {self.name!r}: cannot fetch {weights!r} weights for encoder {encoder!r} "
                              f"({str(error).splitlines()[0][:200] if str(error) else type(error).__name__}); "
                              "offline, pass a local file: --weights path/to/file.safetensors") from None
        except (ValueError, TypeError, RuntimeError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"model {self.name!r} with encoder {encoder!r}: {message}") from None
        if local:
            load_weights(model, weights, part="auto")
        pad_inputs_to_stride(model)
        return model


def pad_inputs_to_stride(model: nn.Module) -> None:
    """Let an smp model take any H x W: pad the input to its encoder's stride, crop the logits back.

    smp refuses sides that are not multiples of the encoder's output stride (32 for most, 16 for
    DeepLabV3+); masksmith's own U-Net pads, and every model in the registry keeps that contract.
    Hooks rather than a wrapper module keep the state-dict keys smp's own, so smp weight files load.
    """
    encoder = encoder_of(model)
    multiple = encoder_stride(encoder) if encoder is not None else DEFAULT_ENCODER_STRIDE
    input_sizes: list[tuple[int, int]] = []
    model.multiple = multiple  # read by tiled prediction and ONNX export, as for the built-in models

    def pad(module: nn.Module, args: tuple) -> tuple:
        input_sizes.append(tuple(args[0].shape[-2:]))
        return (pad_to_multiple(args[0], multiple), *args[1:])

    def crop(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        height, width = input_sizes.pop()
        return output[..., :height, :width]

    model.register_forward_pre_hook(pad)
    model.register_forward_hook(crop)


def _model_class(smp: Any, arch: str, name: str, quiet: bool = False) -> type | None:
    """smp's class for `arch`, or a ConfigError (None when `quiet`) when this smp version lacks it."""
    model_class = getattr(smp, arch, None)
    if model_class is None and not quiet:
        raise ConfigError(f"model {name!r}: this segmentation_models_pytorch ({smp.__version__}) has no {arch}; "
                          "upgrade it: pip install -U segmentation-models-pytorch")
    return model_class


for _arch in ARCHITECTURES:
    MODELS.register(f"smp.{_arch}")(SmpBuilder(_arch))


def encoder_normalization(model: str, options: dict[str, Any], channels: int = 3) -> tuple[list[float], list[float]] | None:
    """The (mean, std) a model's pretrained encoder was trained with, on the 0..1 scale; None without one."""
    if not model.startswith("smp.") and options.get("encoder"):
        from masksmith.models.encoders import pretrained_normalization

        # masksmith's own encoders (unet --encoder ...): known only once pretrained weights are asked for.
        return pretrained_normalization(options["encoder"], options.get("weights"), channels)
    if not model.startswith("smp.") or not _smp_available():
        return None
    encoder = options.get("encoder") or DEFAULT_ENCODER
    weights = options.get("weights")
    hub_weights = bool(weights) and not is_weights_file(weights)
    params = _preprocessing_params(encoder, weights if hub_weights else "imagenet", online=hub_weights)
    if not params or params.get("mean") is None or params.get("std") is None:
        return None
    scale = 255.0 if list(params.get("input_range") or [0, 1])[1] > 1 else 1.0
    mean = [float(v) / scale for v in params["mean"]]
    std = [float(v) / scale for v in params["std"]]
    if channels == len(mean):
        return mean, std
    if channels == 1:
        # smp adapts the first convolution to one channel by summing its RGB filters, which treats a
        # gray image as equal R, G and B; the channel average is the matching normalization.
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return None


# Encoder families whose pretraining did not use ImageNet's mean/std (0..1 scale), for the offline fallback.
_FAMILY_NORMALIZATION = {
    "inception": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "xception": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "dpn": ([124 / 255, 117 / 255, 104 / 255], [1 / (0.0167 * 255)] * 3),
}
_IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _preprocessing_params(encoder: str, pretrained: str, online: bool) -> dict[str, Any] | None:
    """smp's preprocessing parameters for `encoder`, with an offline fallback; None when it has none."""
    # `online`: only when hub weights were asked for (which need the network anyway) is the hub asked,
    # so a random or local-file start never waits on huggingface_hub's retries.
    from segmentation_models_pytorch import encoders as smp_encoders

    if encoder.startswith("tu-"):
        # timm keeps each model's pretraining config locally: no network needed.
        import timm

        try:
            config = timm.models.get_pretrained_cfg(encoder[3:])
        except (RuntimeError, ValueError, KeyError):
            config = None
        if config is None or getattr(config, "mean", None) is None:
            return None
        return {"mean": list(config.mean), "std": list(config.std), "input_range": [0, 1]}
    settings = smp_encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get(pretrained)
    if settings is None:
        return None
    if "mean" in settings and "std" in settings:  # smp < 0.5 keeps them in its own tables
        return dict(settings)
    try:
        # smp >= 0.5 reads them from the hub: first its local cache, which needs no network.
        import json

        from huggingface_hub import hf_hub_download

        path = hf_hub_download(settings["repo_id"], filename="config.json", revision=settings.get("revision"),
                               local_files_only=True)
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        return {"mean": config["mean"], "std": config["std"], "input_range": config.get("input_range", [0, 1])}
    except Exception:  # not cached (huggingface_hub raises its own error types) or an odd config file
        pass
    try:
        if not online:
            raise LookupError("no hub weights asked for")
        return smp_encoders.get_preprocessing_params(encoder, pretrained=pretrained)
    except Exception:  # offline: huggingface_hub raises its own error types
        family = next((value for prefix, value in _FAMILY_NORMALIZATION.items() if encoder.startswith(prefix)),
                      _IMAGENET)
        logger.info("normalization of encoder %s: hub unreachable, using its family's %s", encoder, family)
        return {"mean": family[0], "std": family[1], "input_range": [0, 1]}
