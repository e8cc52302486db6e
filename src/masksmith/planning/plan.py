"""Fingerprint → training plan: TrainConfig values derived from the data, each with its reason.

The rules (all numbers are module constants):
- size: a multiple of 32 (a 4-level U-Net halves the input 4 times) no larger than the median
  image's shorter side, capped at 256 on CPU / 512 on CUDA, and lowered in steps of 32 until a
  batch of 2 fits the memory budget.
- resize: "random_crop" when the median shorter side is at least 2x the size (resizing would throw
  away three quarters of the pixels or more), every image is at least `size` on both sides, and
  resizing would leave the labelled structures less than MIN_RESIZED_WIDTH (8) px wide; else "resize".
  The width is the fingerprint's structure_width (foreground pixels per run along rows and columns,
  from `check`) times the resize factor. 8 px lies between the ISBI membranes (5.4 px, 2.7 resized), which
  score better on crops, and the clothing photos (33.5 px, 15.6 resized), which score better resized;
  without a width the size ratio alone decides. Evidence: docs/results.md#planned-resize-or-crop.
- batch_size: the largest power of two in 2..16 whose memory estimate fits the budget, and no
  larger than the number of training images.
- Memory estimate (fp32 training of the default U-Net, base_channels 32, depth 4):
      MB = OVERHEAD_MB + batch * size² * (BYTES_PER_PIXEL_PER_BASE_CHANNEL * base_channels
                                          + BYTES_PER_PIXEL_PER_CLASS * num_classes) / 2**20
  Activations of a U-Net are dominated by the full-resolution levels: each level stores about a
  dozen feature maps of its width (convolution, BatchNorm, concatenation, upsampling outputs) and
  the widths double as the area quarters, so the sum is ~23 values x base_channels per input pixel,
  about doubled for the backward pass. Measured on CPU (torch 2, 59 classes): 256², batch 2 →
  635 MB, batch 4 → 1054 MB, i.e. ~3.3 KB per pixel; the constants give ~4.1 KB (on the safe side).
  With AMP on CUDA the real use is lower still.
- loss: "dice+ce" when the foreground share is below 10% or the classes are imbalanced (the most
  frequent seen class has more than IMBALANCE_RATIO x the pixels of the least frequent one), else "ce".
  Evidence: docs/results.md#planned-loss.
- class_weights (only when imbalanced): 1/sqrt(pixel frequency), scaled so that the average weight
  per training pixel is 1 (the loss keeps the scale of plain cross-entropy), then capped at 10.
  Scaling to a mean of 1 over the classes instead lets a few very rare classes set the scale: on the
  clothing data that gave the background (77% of pixels) a weight of 0.014, i.e. almost no loss for
  calling background clothing. Classes that never occur get 1 (a 0 weight would silently drop them
  from the loss; with no pixels their weight changes nothing until they appear).
  Evidence: docs/results.md#planned-class-weights.
- mean / std / channels: as measured by `check` (mean / std on up to 200 training images, 0..1 scale).
- augment: "upright" for 3-channel images, "default" for 1-channel ones. Colour images are mostly photos
  taken with up at the top (people, streets, cars, pets): a vertical flip or a 90° turn shows the model
  views that never occur (and `--tta` then averages them). Single-channel images are mostly microscopy,
  EM and scans, where no direction is up. Overhead colour imagery (satellite, aerial, slides) wants
  `--augment default`; the plan cannot tell it from photos. Evidence: docs/results.md#planned-augmentation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from masksmith.data.sizes import as_size
from masksmith.errors import ConfigError, DataError

SIZE_STEP = 32
MIN_SIZE = 32
SIZE_CAP = {"cpu": 256, "cuda": 512}
CROP_RATIO = 2.0
MIN_RESIZED_WIDTH = 8.0  # px: labelled structures narrower than this after resizing train on crops instead
BATCH_SIZES = (16, 8, 4, 2)
BASE_CHANNELS = 32  # the U-Net default
BYTES_PER_PIXEL_PER_BASE_CHANNEL = 100
BYTES_PER_PIXEL_PER_CLASS = 16  # logits, softmax and their gradients
OVERHEAD_MB = 300  # weights, optimizer state, allocator slack
SMALL_FOREGROUND = 0.10
IMBALANCE_RATIO = 10.0
MAX_CLASS_WEIGHT = 10.0


@dataclass(frozen=True)
class PlanChoice:
    """One planned option: a TrainConfig field name, its value, and one line saying why."""

    option: str
    value: Any
    reason: str


def memory_mb(size: int, batch_size: int, num_classes: int = 2, base_channels: int = BASE_CHANNELS) -> float:
    """Estimated peak training memory in MB of a U-Net at `size`² and `batch_size` (see module doc)."""
    per_pixel = BYTES_PER_PIXEL_PER_BASE_CHANNEL * base_channels + BYTES_PER_PIXEL_PER_CLASS * num_classes
    return OVERHEAD_MB + batch_size * size * size * per_pixel / 2**20


def _given_values(given: set[str] | frozenset[str] | Mapping[str, Any]) -> tuple[set[str], dict[str, Any]]:
    """Names of the options the user set, and their values where known."""
    if isinstance(given, Mapping):
        return set(given), {k: v for k, v in given.items() if v is not None}
    return set(given), {}


def _largest_batch(size: int, budget: int, num_classes: int, limit: int) -> int | None:
    """The largest batch size in BATCH_SIZES that fits `budget` MB and `limit` images; None if none fits."""
    for batch in BATCH_SIZES:
        if batch <= max(limit, BATCH_SIZES[-1]) and memory_mb(size, batch, num_classes) <= budget:
            return batch
    return None


def resized_structure_width(fp: Mapping[str, Any], input_side: int) -> float | None:
    """The labelled structures' width (the check's structure_width, px) once the median image is resized so that its
    short side is `input_side`; None when the fingerprint has no width."""
    width, sizes = fp.get("structure_width"), fp.get("image_size") or {}
    short = min(float(sizes.get("median_width") or 0), float(sizes.get("median_height") or 0))
    if not width or not short:
        return None
    return float(width) * input_side / short


def _fmt(value: float) -> str:
    return f"{value:g}"


def derive_plan(
    fp: dict[str, Any],
    *,
    given: set[str] | frozenset[str] | Mapping[str, Any] = frozenset(),
    memory_budget_mb: int = 4096,
    device: str = "cpu",
) -> list[PlanChoice]:
    """Derive TrainConfig values from a dataset fingerprint; options in `given` are left as the user set them.

    `given` is a set of option names, or a mapping of option → value: then the values (e.g. a given
    size or batch_size) are used when deriving the remaining options.
    """
    if device not in SIZE_CAP:
        raise ConfigError(f"device must be one of {', '.join(SIZE_CAP)}, got {device!r}")
    if memory_budget_mb <= OVERHEAD_MB:
        raise ConfigError(f"memory_budget_mb must be above {OVERHEAD_MB} MB, got {memory_budget_mb}")
    sizes = fp.get("image_size") or {}
    if not fp.get("train_images") or not sizes.get("median_width") or not sizes.get("median_height"):
        raise DataError("the fingerprint holds no readable training images; run `masksmith check` and fix the errors")
    names, known = _given_values(given)
    choices: list[PlanChoice] = []

    def choose(option: str, value: Any, reason: str) -> None:
        if option not in names:
            choices.append(PlanChoice(option, value, reason))

    train_images = int(fp["train_images"])
    num_classes = int(fp.get("num_classes") or 2)
    median_w, median_h = float(sizes["median_width"]), float(sizes["median_height"])
    min_side = min(sizes.get("min_width") or median_w, sizes.get("min_height") or median_h)
    short = min(median_w, median_h)
    median_text = f"median image {_fmt(median_w)}x{_fmt(median_h)}, short side {_fmt(short)}"

    # --- size and batch size: one decision, because memory ties them together -----------------
    given_batch = int(known["batch_size"]) if "batch_size" in known else None
    fit_batch = given_batch or BATCH_SIZES[-1]
    crop_side = None
    if "size" in known:
        height, width = as_size(known["size"])
        # The memory estimate counts pixels; cropping compares the images with the input's short side.
        size, crop_side = int(math.sqrt(height * width)), min(height, width)
        size_reason = f"size {size}: given"
    else:
        cap = SIZE_CAP[device]
        size = max(MIN_SIZE, min(cap, int(short) // SIZE_STEP * SIZE_STEP))
        why = [median_text]
        if short < MIN_SIZE:
            why.append(f"raised to the minimum {MIN_SIZE}")
        elif size == cap and short >= cap + SIZE_STEP:
            why.append(f"capped at {cap} on {device}")
        while size > MIN_SIZE and memory_mb(size, fit_batch, num_classes) > memory_budget_mb:
            size -= SIZE_STEP
        if memory_mb(size, fit_batch, num_classes) > memory_budget_mb:
            why.append(f"even {size} needs ~{memory_mb(size, fit_batch, num_classes):.0f} MB for a batch of "
                       f"{fit_batch}, over {memory_budget_mb} MB")
        size_reason = f"size {size}: " + "; ".join(why)

    if given_batch is not None:
        batch = given_batch
    else:
        batch = _largest_batch(size, memory_budget_mb, num_classes, train_images) or BATCH_SIZES[-1]
        need = memory_mb(size, batch, num_classes)
        over = "" if need <= memory_budget_mb else " (over budget even so: the smallest batch)"
        limit = f"; {train_images} training images" if batch < 16 and batch * 2 > train_images else ""
        assumed = " (size given, value not known here: estimated)" if "size" in names and "size" not in known else ""
        choose("batch_size", batch,
               f"batch {batch}: ~{need:.0f} MB at {size}x{size}{assumed} with {num_classes} classes, "
               f"budget {memory_budget_mb} MB{over}{limit}")
    if "size" not in names:
        assumed = " (batch_size given, value not known here: assumed)" if "batch_size" in names and given_batch is None else ""
        size_reason += f"; {size} keeps a batch of {batch}{assumed} at ~{memory_mb(size, batch, num_classes):.0f} MB " \
                       f"(budget {memory_budget_mb} MB)"
    choose("size", size, size_reason)
    # The batch choice is listed after size in the plan: reorder so size reads first.
    choices.sort(key=lambda c: {"size": 0, "batch_size": 1}.get(c.option, 2))

    crop_side = crop_side or size
    ratio = short / crop_side
    width = fp.get("structure_width")
    resized_width = resized_structure_width(fp, crop_side)
    width_text = (f"the labelled structures, {float(width):.1f} px wide, would be {resized_width:.1f} px resized"
                  if resized_width is not None else "")
    if ratio >= CROP_RATIO and min_side >= crop_side and (resized_width is None or resized_width < MIN_RESIZED_WIDTH):
        why = f" and {width_text} (< {MIN_RESIZED_WIDTH:g})" if width_text else ""
        choose("resize", "random_crop",
               f"random_crop: {median_text} is {ratio:.1f}x the input side {crop_side} (≥ {CROP_RATIO:g}x){why}; "
               "crops keep full resolution, prediction runs on whole images")
    else:
        if ratio < CROP_RATIO:
            detail = f"{ratio:.1f}x the input side {crop_side} (< {CROP_RATIO:g}x)"
        elif min_side < crop_side:
            detail = f"{ratio:.1f}x the input side {crop_side}, but the smallest side {_fmt(min_side)} is below it"
        else:
            detail = (f"{ratio:.1f}x the input side {crop_side}, but {width_text} (≥ {MIN_RESIZED_WIDTH:g}): "
                      "whole images give every step the scene's context")
        choose("resize", "resize", f"resize: {median_text} is {detail}; the whole image is resized to the input size")

    # --- input channels and normalisation ------------------------------------------------------
    channels = fp.get("channels")
    modes = ", ".join(f"{m} {n}" for m, n in (fp.get("image_modes") or {}).items())
    if channels in (1, 3):
        choose("channels", channels, f"channels {channels}: image modes {modes or 'unknown'}")
    use_channels = known.get("channels", channels)
    mean, std = fp.get("mean"), fp.get("std")
    if mean and std and len(mean) == len(std) == use_channels:
        stats_from = f"measured on {fp.get('stats_images', '?')} training images (0..1 scale)"
        choose("mean", [round(float(v), 4) for v in mean], f"mean {_list(mean)}: {stats_from}")
        choose("std", [round(float(v), 4) for v in std], f"std {_list(std)}: {stats_from}")
    if use_channels == 3:
        choose("augment", "upright", "upright: colour images, taken as photos with up at the top: left-right flips, "
                                     "small rotation/scale/shift, colour; no upside-down or 90°-turned views "
                                     "(overhead imagery: --augment default)")
    elif use_channels == 1:
        choose("augment", "default", "default: single-channel images (microscopy, scans) have no up: flips both "
                                     "ways, 90° turns, small rotation/scale, brightness")

    # --- loss and class weights ----------------------------------------------------------------
    frequency = [float(f) for f in fp.get("class_pixel_frequency") or []]
    names_list = list(fp.get("class_names") or [f"class_{i}" for i in range(len(frequency))])
    if frequency:
        seen = [(i, f) for i, f in enumerate(frequency) if f > 0]
        foreground = float(fp.get("foreground_share") if fp.get("foreground_share") is not None
                           else 1.0 - frequency[0])
        top = max(seen, key=lambda item: item[1]) if seen else None
        low = min(seen, key=lambda item: item[1]) if seen else None
        spread = top[1] / low[1] if top and low else 1.0
        imbalanced = len(seen) > 1 and spread > IMBALANCE_RATIO
        spread_text = (f"most frequent class {_name(names_list, top[0])} has {spread:.3g}x the pixels of the "
                       f"rarest {_name(names_list, low[0])}" if top and low and len(seen) > 1 else "one class")
        if foreground < SMALL_FOREGROUND or imbalanced:
            choose("loss", "dice+ce",
                   f"dice+ce: foreground is {100 * foreground:.1f}% of pixels; {spread_text} "
                   f"(dice for foreground < {100 * SMALL_FOREGROUND:g}% or > {IMBALANCE_RATIO:g}x imbalance)")
        else:
            choose("loss", "ce", f"ce: foreground is {100 * foreground:.1f}% of pixels and {spread_text} "
                                 f"(≤ {IMBALANCE_RATIO:g}x): balanced enough for plain cross-entropy")
        if imbalanced:
            weights, capped, unseen = class_weights(frequency)
            notes = [(f"1/sqrt(pixel frequency), pixel mean 1, capped at {MAX_CLASS_WEIGHT:g}: "
                      f"{_name(names_list, top[0])} {weights[top[0]]:.3g} … "
                      f"{_name(names_list, low[0])} {weights[low[0]]:.3g}")]
            if capped:
                notes.append(f"{len(capped)} capped")
            if unseen:
                notes.append(f"{len(unseen)} never-seen class(es) ({', '.join(_name(names_list, i) for i in unseen[:4])}"
                             f"{', …' if len(unseen) > 4 else ''}) get 1, not 0, so they stay in the loss")
            choose("class_weights", weights, "class weights: " + "; ".join(notes))
    return choices


def class_weights(frequency: list[float]) -> tuple[list[float], list[int], list[int]]:
    """Inverse-sqrt weights with a per-pixel mean of 1, capped; (weights, capped, unseen)."""
    seen = [i for i, f in enumerate(frequency) if f > 0]
    unseen = [i for i, f in enumerate(frequency) if f <= 0]
    raw = {i: 1.0 / math.sqrt(frequency[i]) for i in seen}
    # sum_i f_i * raw_i / scale == 1 over the pixels that occur: the average pixel keeps weight 1.
    scale = sum(frequency[i] * raw[i] for i in seen) / sum(frequency[i] for i in seen) if seen else 1.0
    weights = [1.0] * len(frequency)
    capped: list[int] = []
    for i, value in raw.items():
        weight = value / scale
        if weight > MAX_CLASS_WEIGHT:
            weight = MAX_CLASS_WEIGHT
            capped.append(i)
        weights[i] = round(weight, 4)
    return weights, capped, unseen


def _name(names: list[str], index: int) -> str:
    return repr(names[index]) if index < len(names) else f"class {index}"


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{float(v):.3f}" for v in values) + "]"


def _value_text(value: Any, width: int = 36) -> str:
    """A value for the plan table, shortened when long (the JSON plan keeps it whole)."""
    text = json.dumps(value)
    if len(text) <= width:
        return text
    if isinstance(value, list):
        return f"[{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in value[:3])}, … {len(value)} values]"
    return text[: width - 1] + "…"


def plan_text(choices: list[PlanChoice]) -> str:
    """The plan as aligned lines: option, value, reason."""
    if not choices:
        return "nothing to plan: every option was given\n"
    option_width = max(len(c.option) for c in choices)
    values = [_value_text(c.value) for c in choices]
    value_width = max(len(v) for v in values)
    return "".join(f"{c.option:<{option_width}}  {v:<{value_width}}  {c.reason}\n" for c, v in zip(choices, values))


def plan_to_dict(choices: list[PlanChoice]) -> dict[str, Any]:
    """JSON-ready plan: the config values to apply, and each choice with its reason."""
    return {
        "version": 1,
        "config": {c.option: c.value for c in choices},
        "choices": [{"option": c.option, "value": c.value, "reason": c.reason} for c in choices],
    }
