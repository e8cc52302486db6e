"""segmentation_models_pytorch architectures in the model registry (`smp.Unet`, ...), plus local weights files.

smp is an optional extra (`pip install 'masksmith[smp]'`): nothing here imports it until a model is
built, so masksmith imports fast and works without it. `load_weights` is general: it loads a local
.safetensors/.pth file into any model (whole model or its encoder) and reports every key that does not fit.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from masksmith.errors import ConfigError
from masksmith.models.registry import MODELS
from masksmith.models.base import DEFAULT_ENCODER_STRIDE, encoder_of, encoder_stride, pad_to_multiple

logger = logging.getLogger("masksmith")

# The architectures smp's `create_model` knows (0.3 - 0.5). Listed here, not read from smp, so that
# registering them needs no import; an architecture this smp version lacks fails clearly at build time.
ARCHITECTURES = ("Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
                 "PAN", "UPerNet", "Segformer", "DPT")
DEFAULT_ENCODER = "resnet34"
WEIGHT_SUFFIXES = (".safetensors", ".msb", ".pth", ".pt", ".bin", ".ckpt")
# Arguments masksmith sets itself (or that would change what the model returns), never options.
_RESERVED = {"encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params", "self"}
# Wrappers that training frameworks put around a state dict or in front of its keys.
_WRAPPER_KEYS = ("state_dict", "model", "network", "module")
_KEY_PREFIXES = ("model.", "network.", "module.", "_orig_mod.")


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


def is_weights_file(value: str | None) -> bool:
    """Whether a `weights` value names a local file (rather than a hub name such as 'imagenet')."""
    if not value:
        return False
    return Path(value).suffix.lower() in WEIGHT_SUFFIXES or Path(value).exists()


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


@dataclass
class WeightsReport:
    """What `load_weights` did: which part it loaded and the keys that did not fit."""

    path: str
    part: Literal["model", "encoder"]
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    # Classification-only tensors of a published backbone checkpoint that the encoder has no place for.
    dropped: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every key of the target and the file matched in name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """The unmatched keys as one line (at most 8 names per kind)."""
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape-mismatched", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors/.msb file or a .pth/.pt/.bin/.ckpt file (tensors only: never a full unpickle)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such weights file")
    try:
        if path.suffix.lower() in (".safetensors", ".msb"):
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for foreign or pickled files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: not a readable weights file ({reason[:200]})") from None
    # Unwrap {"state_dict": {...}} (Lightning) or {"model": {...}} until the tensors show.
    while isinstance(state, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: holds no state dict (a mapping of parameter names to tensors)")
    return _strip_prefixes(state)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix ('model.', 'network.', ...) that every key carries."""
    changed = True
    while changed:
        changed = False
        for prefix in _KEY_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def _target(model: nn.Module, state: dict[str, torch.Tensor], part: str) -> tuple[str, nn.Module, dict[str, torch.Tensor]]:
    """Decide whether `state` is for the whole model or its encoder, and key it for that module."""
    encoder = getattr(model, "encoder", None)
    encoder = encoder if isinstance(encoder, nn.Module) else None
    if part not in ("auto", "model", "encoder"):
        raise ConfigError(f"weights part must be auto, model or encoder, got {part!r}")
    if part == "encoder" and encoder is None:
        raise ConfigError(f"{type(model).__name__} has no encoder to load weights into")
    all_encoder_keys = encoder is not None and all(key.startswith("encoder.") for key in state)
    if part == "auto" and encoder is not None:
        # A file of "encoder.*" keys was saved from a whole model's encoder; otherwise pick the part
        # whose parameter names the file covers best.
        if all_encoder_keys:
            part = "encoder"
        else:
            model_hits = len(set(state) & set(model.state_dict()))
            encoder_hits = len(set(state) & set(encoder.state_dict()))
            part = "encoder" if encoder_hits > model_hits else "model"
    elif part == "auto":
        part = "model"
    if part == "encoder":
        if all_encoder_keys:
            state = {key[len("encoder."):]: value for key, value in state.items()}
        return "encoder", encoder, state
    return "model", model, state


def load_weights(model: nn.Module, path: str | Path, part: Literal["auto", "model", "encoder"] = "auto",
                 strict: bool = True) -> WeightsReport:
    """Load a local weights file into `model` (or its encoder); unmatched keys raise (strict) or are logged."""
    state = read_state_dict(path)
    dropped: list[str] = []
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        # Models with built-in encoders rename a published backbone checkpoint to their own keys first.
        state, dropped = adapt(state)
    part_name, target, state = _target(model, state, part)
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{key} (file {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
                        for key in set(state) & set(expected) if state[key].shape != expected[key].shape)
    fitting = {key: value for key, value in state.items()
               if key in expected and value.shape == expected[key].shape}
    report = WeightsReport(str(path), part_name, len(fitting), missing, unexpected, mismatched,  # type: ignore[arg-type]
                           dropped)
    if not report.clean:
        message = f"{path}: weights do not match the {part_name} ({report.problems()})"
        if strict:
            raise ConfigError(message)
        logger.warning(message + "; loading the %d matching tensors", len(fitting))
    target.load_state_dict(fitting, strict=False)
    return report
