"""Stage 1, prepare data: find the pairs, split them, decide encoding, classes, channels and normalization,
and validate every pair before any training starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from masksmith.config import TrainConfig, UserConfig
from masksmith.core.runlog import RunLog
from masksmith.data.check import CheckReport
from masksmith.data.classes import class_list_name, find_class_file, read_class_names, without_named_void
from masksmith.data.discover import Discovery, Sample, discover_dataset, random_split_pool, split_samples, usable_pairs
from masksmith.data.encoding import MaskEncoding, color_table_text, describe_encoding
from masksmith.data.images import image_channels
from masksmith.data.labels import LabelSpec, resolve_labels
from masksmith.data.validate import validate_samples
from masksmith.errors import ConfigError, DataError
from masksmith.models.smp import encoder_normalization
from masksmith.training.sampling import classes_present, describe_factors, repeat_factors

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
GRAY_MEAN, GRAY_STD = [0.5], [0.25]
# A split decided outside the run (a cross-validation fold): train samples, validation samples, its record.
FixedSplit = tuple[list[Sample], list[Sample], dict[str, Any]]


@dataclass
class PreparedData:
    """The data decisions of a run: splits, mask encoding, classes, channels, normalization."""

    train: list[Sample]
    val: list[Sample]
    labels: LabelSpec
    channels: int
    mean: list[float]
    std: list[float]
    split: dict[str, Any]
    normalization_from: str = "config"  # or "encoder NAME": then the run's config records the values
    repeat_factors: np.ndarray | None = None  # per training image, with --repeat-threshold (data.sampling)

    @property
    def encoding(self) -> MaskEncoding:
        """How the mask files encode the classes."""
        return self.labels.encoding

    @property
    def class_names(self) -> list[str]:
        """The class names, background first."""
        return list(self.labels.class_names)

    @property
    def num_classes(self) -> int:
        """How many classes the masks hold (2 for binary data)."""
        return self.labels.num_classes


def with_dataset_classes(user: UserConfig) -> UserConfig:
    """The dataset's own classes file (e.g. from masksmith convert) when the user named none."""
    config = user.config
    if config.classes is None and config.data is not None and (found := find_class_file(config.data)) is not None:
        return user.with_values({"classes": str(found)})
    return user


def with_void_class(user: UserConfig, log: RunLog) -> UserConfig:
    """The run's classes without the void class that its ignore value names (data.classes' rule), with one line
    in the log saying so; unchanged when the ignore value names no class."""
    config = user.config
    names, void = without_named_void(read_class_names(config.classes), config.ignore_index,
                                     class_list_name(config.classes))
    if void is None:
        return user
    log.info(void.text())
    return user.with_values({"classes": names})


def find_pairs(config: TrainConfig) -> Discovery:
    """The run's one discovery of the data; unpaired files are a DataError naming them (a warning with
    --skip-unpaired), as `discover` says. The plan's check and the split both read this."""
    found = discover_dataset(config.data, mask_suffix=config.mask_suffix, skip_unpaired=config.skip_unpaired)
    usable_pairs(found, skip_unpaired=config.skip_unpaired)
    return found


def split_pairs(config: TrainConfig,
                splits: dict[str, list[Sample]]) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """Train and validation pairs from the discovered `splits`: the dataset's split folders, or a seeded
    random split of the pool."""
    if "train" in splits and "val" in splits:
        return splits["train"], splits["val"], {"kind": "folders"}
    train, val = split_samples(random_split_pool(splits), config.val_fraction, config.seed)
    return train, val, {"kind": "random", "seed": config.seed, "val_fraction": config.val_fraction}


def decide_labels(config: TrainConfig, train: list[Sample]) -> LabelSpec:
    """The masks' encoding, class names, display colors and ignore value, decided once by data.labels
    (as check decides them) from the options and the training masks."""
    return resolve_labels([s.mask for s in train if s.mask is not None], classes=config.classes,
                          foreground=config.foreground, palette=config.palette, ignore_color=config.ignore_color,
                          ignore_index=config.ignore_index)


def decide_normalization(user: UserConfig, channels: int,
                         model_arguments: dict[str, Any]) -> tuple[list[float], list[float], str]:
    """Mean and std per channel and where they come from: the user's, a pretrained encoder's, the config's
    (the plan's measurement), or the ImageNet / gray defaults."""
    config = user.config
    pretrained = encoder_normalization(config.model, model_arguments, channels)
    if pretrained and not {"mean", "std"} & user.given:
        # A pretrained encoder expects the statistics it was trained with, not the dataset's own.
        mean, std, source = list(pretrained[0]), list(pretrained[1]), f"encoder {model_arguments.get('encoder')}"
    else:
        mean = list(config.mean or (IMAGENET_MEAN if channels == 3 else GRAY_MEAN))
        std = list(config.std or (IMAGENET_STD if channels == 3 else GRAY_STD))
        source = "config"
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean and std need {channels} values each (one per input channel)")
    return mean, std, source


def prepare_data(user: UserConfig, model_arguments: dict[str, Any], log: RunLog,
                 fixed_split: FixedSplit | None = None, *, found: Discovery | None = None,
                 checked: CheckReport | None = None) -> PreparedData:
    """Split (or take `fixed_split`: train, val and its record, e.g. a cross-validation fold), decide classes,
    channels and normalization, then validate every pair (skipping bad ones with --skip-invalid);
    DataError when no training or validation image is left. `found`: the run's discovery (`find_pairs`, made
    here when not given); `checked`: the plan's check of the data, whose cleanly read pairs are not read again."""
    config = user.config
    if fixed_split is not None:
        train, val, split = list(fixed_split[0]), list(fixed_split[1]), dict(fixed_split[2])
    else:
        train, val, split = split_pairs(config, (found or find_pairs(config)).splits)
    # The run's check decided the labels from a full scan of every mask with these same options: taken as
    # they are, so detection does not sample the masks again (and the classes cover values seen anywhere).
    labels = checked.labels if checked is not None and checked.labels is not None else decide_labels(config, train)
    # The pairs that check read and decoded with these very labels without an error: not read again.
    read_cleanly = checked.pairs_read_cleanly() if checked is not None else set()
    encoding, names = labels.encoding, list(labels.class_names)
    channels = config.channels or image_channels(train[0].image)
    mean, std, source = decide_normalization(user, channels, model_arguments)
    from_file = f" (from {config.classes})" if isinstance(config.classes, str) else ""
    log.info(f"data: {len(train)} train / {len(val)} val images ({split['kind']} split), {len(names)} classes"
             f"{from_file}, {describe_encoding(encoding)}, {channels}-channel input")
    if encoding.kind == "color":
        log.info(color_table_text(encoding, names=names).rstrip())
    if source != "config":
        log.info(f"normalization of {source}: mean {mean}, std {std}")
    rules = dict(encoding=encoding, num_classes=len(names), ignore_index=labels.ignore_index,
                 progress=not config.quiet, skip_invalid=config.skip_invalid, read_cleanly=read_cleanly)
    train = validate_samples(train, **rules)
    val = validate_samples(val, **rules)
    if not train or not val:
        raise DataError(f"{config.data}: no usable {'training' if not train else 'validation'} images left")
    split["val"] = [s.name for s in val]  # the recorded split is what is used: skipped pairs leave it
    factors = None
    if config.repeat_threshold:
        present = classes_present(train, encoding, len(names), labels.ignore_index, progress=not config.quiet)
        factors = repeat_factors(present, config.repeat_threshold)
        log.info(describe_factors(factors, config.repeat_threshold))
    return PreparedData(train, val, labels, channels, mean, std, split, normalization_from=source,
                        repeat_factors=factors)
