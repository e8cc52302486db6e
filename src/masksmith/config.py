"""The training configuration: one pydantic model, the single source of every option and its default.

YAML in (`--config cfg.yaml`), command-line overrides on top, and the resolved config written back
to the run folder as commented YAML so a run can be repeated from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from masksmith.core.registry import did_you_mean
from masksmith.data.classes import class_names_problem
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MAX_PIXEL_VALUE
from masksmith.data.limits import MAX_WORKERS
from masksmith.data.sizes import ResizeMode
from masksmith.errors import ConfigError

Optimizer = Literal["adam", "adamw", "sgd", "rmsprop"]
Scheduler = Literal["none", "cosine", "poly", "plateau"]
Strategy = Literal["auto", "ddp", "ddp_spawn"]
Precision = Literal["auto", "32", "16-mixed", "bf16-mixed"]
MAX_INPUT_SIZE = 8192  # network input side; a bundle asking for more is refused as damaged (bundle.py)
Side = Annotated[int, Field(strict=True, ge=16, le=MAX_INPUT_SIZE)]
# One side for square inputs, or [height, width]: what the config, the plan and the bundle store.
InputSize = Union[Side, Annotated[list[Side], Field(min_length=2, max_length=2)]]
MAX_OPTION_INT = 65536  # no architecture option (channels, depth, kernel) is legitimately larger
MAX_OPTION_NESTING = 4
# Bounds of the numeric options: far beyond any real run, near enough that a typo fails here, with the option's
# name, instead of as an overflow deep inside PyTorch after the run folder exists.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 4096
MAX_LEARNING_RATE = 10.0
MAX_MINUTES = 525_600  # a year
MAX_WEIGHT = 1e6  # class weights, gradient clip
MAX_IMAGE_PIXELS = 1 << 40
ChannelMean = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
ChannelStd = Annotated[float, Field(ge=1e-6, le=10, allow_inf_nan=False)]
ClassWeight = Annotated[float, Field(ge=0, le=MAX_WEIGHT, allow_inf_nan=False)]
ColorValue = Annotated[int, Field(ge=0, le=255)]
# The validation metrics the trainer logs each epoch (engine.SegmentationModule): what `monitor` may name.
MONITORED_METRICS = ("val_dice", "val_miou", "val_iou", "val_pixel_accuracy", "val_image_dice", "val_loss")


def check_model_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` when every architecture option passes check_model_option (a config's when given, a bundle's when
    read), else the first one's ValueError."""
    for key, value in options.items():
        check_model_option(value, key)
    return options


def check_model_option(value: Any, where: str, depth: int = 0) -> None:
    """Architecture options are small JSON values: bounded numbers, strings, short lists or mappings of them
    (ValueError otherwise). The config checks them when given, the bundle when read."""
    if depth > MAX_OPTION_NESTING:
        raise ValueError(f"{where} is nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > MAX_OPTION_INT:
            raise ValueError(f"{where} = {value} is out of range (at most {MAX_OPTION_INT})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} = {value} is not a finite number")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_model_option(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_model_option(item, f"{where}.{key}", depth + 1)
    else:
        raise ValueError(f"{where} has an unsupported type {type(value).__name__}")


def planned(default: Any = ..., **field: Any) -> Any:
    """A Field whose default the auto plan replaces from the data when the user does not give it."""
    extra = {**field.pop("json_schema_extra", {}), "planned": True}
    return Field(default, json_schema_extra=extra, **field)


def flags(*names: str) -> dict[str, Any]:
    """json_schema_extra naming a field's command-line flags (its --field-name is added unless a long one is given)."""
    return {"flags": list(names)}


class TrainConfig(BaseModel):
    """Every option of `masksmith train`, with its default and a one-line description."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data -------------------------------------------------------------------------------
    data: str = Field(..., description="dataset folder: images/+masks/, train|val|test/{images,masks}, or VOC")
    classes: str | list[str] | None = Field(
        None, description="class names: a classes.txt file (one per line) or a list; default: inferred")
    mask_suffix: str | None = Field(None, description="mask file suffix such as _mask (common ones are found anyway)")
    foreground: int | None = Field(
        None, ge=0, le=MAX_PIXEL_VALUE, description="binary masks: the pixel value that means foreground (ISBI membrane: 0); default: non-zero")
    ignore_index: int = Field(DEFAULT_IGNORE_INDEX, ge=0, le=255, description="mask value that counts for no loss and no metric")
    palette: str | None = Field(
        None, description="RGB color masks: a palette file (CVAT labelmap.txt, name,r,g,b or r g b name); default: colors found")
    ignore_color: Annotated[list[ColorValue], Field(min_length=3, max_length=3)] | None = Field(
        None, description="RGB color masks: the color that marks ignored pixels")
    val_fraction: float = Field(0.2, gt=0, lt=1, allow_inf_nan=False, description="validation share when the data has no val folder")
    folds: int | None = Field(
        None, ge=2, le=100, description="k-fold cross-validation: one model per seeded fold of the train (+val) "
                                        "images in RUN/fold_K/ (splits.json; test is left out), out-of-fold scores "
                                        "in cv_summary.json; --max-time is per fold")
    skip_unpaired: bool = Field(False, description="skip (and list) images without masks instead of failing")
    skip_invalid: bool = Field(
        False, description="skip (and list) unreadable or inconsistent pairs instead of failing")
    max_image_pixels: int | None = Field(
        None, ge=1, le=MAX_IMAGE_PIXELS, description="refuse (before decoding) images with more pixels than this, as possible "
                                "decompression bombs; default: $MASKSMITH_MAX_IMAGE_PIXELS or 89478485")
    size: InputSize = planned(
        256, description="network input size in pixels: one side (square) or [height, width] (the plan keeps the images' aspect ratio)")
    resize: ResizeMode = planned(
        "resize", description="resize: whole image to size; random_crop: train on crops, predict on whole images")
    channels: int | None = planned(None, description="input channels, 1 or 3; default: from the images")
    mean: list[ChannelMean] | None = planned(None, description="normalization mean per channel (0..1 scale); default: ImageNet / 0.5")
    std: list[ChannelStd] | None = planned(None, description="normalization std per channel; default: ImageNet / 0.25")
    augment: str | list[dict[str, Any]] = planned(
        "default", description="augmentation preset (see `masksmith augmentations`) or a list of albumentations transforms")
    repeat_threshold: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False, description="repeat-factor sampling (LVIS): a training image holding a class found in fewer "
                                     "than this share of the images is drawn sqrt(this / the class's share) times as "
                                     "often (its rarest class decides); 0: every image alike")

    auto: bool = Field(
        True, description="derive the options not given (size, resize, batch, normalization, augmentation, loss, class weights) from a dataset check")

    # --- model ------------------------------------------------------------------------------
    model: str = Field("unet", description="architecture name (see `masksmith models`)")
    model_options: dict[str, Any] = Field(default_factory=dict, description="architecture options, e.g. {depth: 4}",
                                          json_schema_extra=flags("--model-option", "-m"))
    encoder: str | None = planned(
        None, description="a pretrained encoder under the decoder; smp models take theirs (resnet34, densenet121, tu-convnext_tiny, ...)")
    weights: str | None = planned(
        None, description="initial weights: imagenet (unet encoders: the installed weights packages; smp: its hub) or a local .safetensors/.pth file "
                          "(whole model or encoder alone); default: random")
    init: str | None = Field(
        None, description="fine-tune from a model bundle (RUN/model.msb): its weights are the starting point, and its "
                          "architecture, input size, channels and normalization are the run's unless given; its "
                          "classes must be the data's")
    binary_head: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="binary data: 2-class softmax or a 1-channel sigmoid head")
    threshold: float = Field(0.5, gt=0, lt=1, allow_inf_nan=False, description="binary: foreground probability threshold at prediction")

    # --- optimisation -----------------------------------------------------------------------
    loss: str = planned("dice+ce", description="loss or weighted sum: ce, bce, dice, focal, e.g. 0.5*dice+ce")
    class_weights: list[ClassWeight] | None = planned(None, description="per-class loss weights")
    optimizer: Optimizer = Field("adam", description="adam, adamw, sgd (momentum 0.9, nesterov) or rmsprop")
    lr: float = planned(1e-3, gt=0, le=MAX_LEARNING_RATE, allow_inf_nan=False, description="learning rate (the plan's pretrained encoder: 2e-3)")
    weight_decay: float = Field(0.0, ge=0, le=MAX_LEARNING_RATE, allow_inf_nan=False, description="weight decay")
    freeze_encoder_epochs: int = planned(
        0, ge=0, le=MAX_EPOCHS, description="train this many epochs with the encoder frozen (weights and BatchNorm statistics), then unfreeze it")
    frozen_stages: int = planned(
        0, ge=0, le=5, description="keep the first N stages of a built-in pretrained encoder (the stem and the layers "
                                   "down to stride 2^N) frozen for the whole run, weights and BatchNorm statistics: "
                                   "no gradient is computed at their high resolutions (mmseg's frozen_stages)")
    encoder_lr: float | None = planned(
        None, gt=0, le=MAX_LEARNING_RATE, allow_inf_nan=False, description="learning rate of the encoder's parameters; default: lr / 10 with freeze_encoder_epochs, "
                                "else lr (the plan's pretrained encoder: lr / 2)")
    scheduler: Scheduler = Field("cosine", description="learning-rate schedule: none, cosine, poly, plateau")
    epochs: int = planned(50, ge=1, le=MAX_EPOCHS, description="maximum number of epochs")
    batch_size: int = planned(8, ge=1, le=MAX_BATCH_SIZE, description="images per training step", json_schema_extra=flags("-b"))
    max_time: float | None = Field(
        None, gt=0, le=MAX_MINUTES, allow_inf_nan=False, description="stop cleanly after this many minutes and keep the best model")
    early_stopping: int = planned(10, ge=0, le=MAX_EPOCHS, description="stop after this many epochs without improvement (0: off)")
    monitor: str = Field(
        "val_dice", description="validation metric for early stopping and the best checkpoint: "
                                + ", ".join(MONITORED_METRICS))
    keep: Literal["best", "last"] = Field(
        "best", description="the epoch whose weights model.msb gets: best (by --monitor) or last (the end of the "
                            "schedule, as nnU-Net's final checkpoint; for a small validation set, with "
                            "--early-stopping 0)")
    grad_clip: float | None = Field(None, gt=0, le=MAX_WEIGHT, allow_inf_nan=False, description="clip the gradient norm to this value")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, allow_inf_nan=False, description="keep an exponential moving average of the weights (this decay per step, "
                                      "e.g. 0.999; Lightning's EMAWeightAveraging): validation, the best checkpoint "
                                      "and the model bundle use the averaged weights")
    precision: Precision = planned(
        "auto", description="numeric precision (Lightning's): 32, 16-mixed (CUDA), bf16-mixed; auto = 16-mixed on CUDA, else 32")
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="channels_last memory format: auto = CUDA only")

    # --- run --------------------------------------------------------------------------------
    seed: int = Field(42, ge=0, le=2**32 - 1, description="random seed (split, initialisation, augmentation)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    devices: int = Field(1, ge=1, le=256, description="processes (GPUs, or CPU processes) per node; more than 1 trains with DDP")
    num_nodes: int = Field(1, ge=1, le=4096, description="machines (torchrun or SLURM starts the processes on each)")
    strategy: Strategy = Field(
        "auto", description="Lightning strategy with several processes: auto (ddp), ddp, ddp_spawn (one command starts them all)")
    num_workers: int | None = Field(None, ge=0, le=MAX_WORKERS, description="data-loading worker processes; default: by CPU count",
                                    json_schema_extra=flags("--workers", "--num-workers"))
    out: str | None = Field(None, description="run folder; default: runs/train, runs/train2, ...",
                            json_schema_extra=flags("--out", "-o"))
    quiet: bool = Field(False, description="no progress bars or tables", json_schema_extra=flags("-q"))

    @field_validator("model_options")
    @classmethod
    def _small_model_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        # The same bounds a bundle's options obey, checked before a network of that size is built.
        return check_model_options(options)

    @field_validator("classes")
    @classmethod
    def _valid_class_names(cls, value: str | list[str] | None) -> str | list[str] | None:
        # A list enters here; a classes file is checked by the same rule when it is read (data.classes).
        if isinstance(value, list) and (problem := class_names_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("channels")
    @classmethod
    def _channels_1_or_3(cls, value: int | None) -> int | None:
        if value not in (None, 1, 3):
            raise ValueError("channels must be 1 or 3")
        return value

    @field_validator("strategy", "precision", mode="before")
    @classmethod
    def _known_choice(cls, value: Any, info: ValidationInfo) -> Any:
        # Before pydantic's Literal check, whose message lists the names but suggests none.
        valid = get_args(cls.model_fields[info.field_name].annotation)
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # YAML's 32
        if isinstance(text, str) and text not in valid:
            # Lightning's own short names (16, bf16) are close to ours but too short for difflib.
            hint = did_you_mean(text, valid) or next(
                (f" (did you mean {name!r}?)" for name in valid if name.startswith(f"{text}-")), "")
            raise ValueError(f"unknown {info.field_name} {text!r}{hint}; valid: {', '.join(valid)}")
        return text

    @field_validator("monitor")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        # Checked here, before any data is read: Lightning would only notice after the first epoch.
        if value not in MONITORED_METRICS:
            raise ValueError(f"unknown metric {value!r}{did_you_mean(value, MONITORED_METRICS)}; "
                             f"valid: {', '.join(MONITORED_METRICS)}")
        return value

    def monitor_mode(self) -> Literal["min", "max"]:
        """Whether the monitored metric improves downwards (losses) or upwards (scores)."""
        return "min" if "loss" in self.monitor else "max"


def _format_errors(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown option {where!r}{did_you_mean(where, TrainConfig.model_fields)}")
        else:
            parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return f"{source}: invalid configuration: " + "; ".join(parts)


def make_config(values: dict[str, Any], source: str = "options") -> TrainConfig:
    """Validate a dict into a TrainConfig, turning pydantic errors into one clear ConfigError line."""
    try:
        return TrainConfig(**values)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


@dataclass(frozen=True)
class UserConfig:
    """A validated config and the names of the options the user gave (the auto plan fills only the others).

    `given` is computed from what was actually passed (YAML keys, keyword arguments, command-line flags),
    never from pydantic's model_fields_set, which a model_dump round trip marks as all given."""

    config: TrainConfig
    given: frozenset[str]

    def with_values(self, values: Mapping[str, Any], source: str = "options") -> "UserConfig":
        """A copy with `values` applied (validated); they are decisions, so `given` stays the user's."""
        return UserConfig(make_config({**self.config.model_dump(), **values}, source), self.given)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with clear errors for missing or malformed files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text (UTF-8) config file: byte {error.start} is "
                          f"{error.object[error.start:error.start + 1]!r}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a mapping of option: value")
    return values


def refuse_unknown(names: Iterable[str], source: str) -> None:
    """ConfigError naming the options TrainConfig does not have, each with the closest valid name."""
    unknown = sorted(set(names) - set(TrainConfig.model_fields))
    if unknown:
        named = ", ".join(f"{name}{did_you_mean(name, TrainConfig.model_fields)}" for name in unknown)
        valid = ", ".join(TrainConfig.model_fields)
        raise ConfigError(f"{source}: unknown option(s) {named}; valid: {valid}")


def resolve_user_config(config_file: str | Path | None = None, **overrides: Any) -> UserConfig:
    """A YAML file (optional) with overrides on top (None means 'not given'); given = the keys of both."""
    values: dict[str, Any] = load_yaml(config_file) if config_file else {}
    refuse_unknown(values, str(config_file))
    refuse_unknown(overrides, "options")
    given = {key: value for key, value in overrides.items() if value is not None}
    values.update(given)
    config = make_config(values, source=str(config_file) if config_file else "options")
    return UserConfig(config, frozenset(values))


def user_config_from(config: TrainConfig, **overrides: Any) -> UserConfig:
    """A TrainConfig built by the caller, with overrides; given = the fields its constructor received."""
    refuse_unknown(overrides, "options")
    given = {key: value for key, value in overrides.items() if value is not None}
    # model_fields_set of the caller's own instance is what its constructor was passed (assignments add to it).
    merged = make_config({**config.model_dump(exclude_unset=True), **given})
    return UserConfig(merged, frozenset(config.model_fields_set | set(given)))


def resolve_config(config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Combine a YAML file (optional) with overrides (None values mean 'not given') into a TrainConfig."""
    return resolve_user_config(config_file, **overrides).config


def config_to_yaml(config: TrainConfig, header: str = "") -> str:
    """The config as YAML with each option's description as a comment above it."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for name, field in TrainConfig.model_fields.items():
        value = getattr(config, name)
        lines.append(f"# {field.description}")
        dumped = yaml.safe_dump({name: value}, default_flow_style=False, sort_keys=False, width=100).rstrip()
        lines.append(dumped)
    return "\n".join(lines) + "\n"
