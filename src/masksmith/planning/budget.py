"""Fit the network, input size and batch to the compute a run has: measured training steps, not guesses.

nnU-Net plans for GPU memory; on a CPU the binding limit is time: the network and input must fit enough
optimizer steps into the budget, and a light pretrained encoder at a smaller, aspect-keeping input fits several
times more of them than a 24-GFLOP U-Net at 256² (docs/results.md#pretrained-encoder-speed). The rule (each
default's evidence: docs/results.md#planner-defaults):

- Candidates: each installed ImageNet-pretrained encoder under the U-Net decoder (when the images have
  1 or 3 channels), else the classic from-scratch U-Net; input sizes keep the median image's aspect
  ratio, short side from the device cap down to MIN_SHORT_SIDE in steps of 32 (sides multiples of 32).
  Evidence: docs/results.md#planned-network.
- Each candidate network (an encoder with a decoder stride, below) is timed for a few real optimizer steps
  (forward, backward, update) at the smallest and the largest input planned for it; the time of the sizes
  between is interpolated by pixel count (a convolutional network's step time grows linearly with its pixels).
- A candidate fits when the budget (minus the planning time and a share for validation) holds at
  least MIN_STEPS optimizer steps and MIN_EPOCHS epochs: fewer leaves a network half trained,
  whatever its size. Among the fitting candidates the largest input wins (segmentation detail is in
  the pixels), then the larger encoder. When nothing fits, the cheapest candidate at the smallest input.
  Evidence: docs/results.md#planned-input-size.
- Epochs and early stopping (when not given): the epochs cap is raised to EPOCH_HEADROOM x the epochs the
  budget holds and early stopping is off, so that the budget ends training and the budget-fitted schedule
  anneals by then; a fixed cap or patience ends a small dataset's run with the rate still high.
  Evidence: docs/results.md#planned-epochs.
- Decoder stride (with a pretrained encoder the plan picked, when no model option is given): at each input
  size, the decoder stops at COARSE_STRIDE and upsamples its logits when the labelled structures (the check's
  width, resized with the image) are still MIN_OUTPUT_WIDTH px wide there, two samples across; else it decodes
  to full resolution. Its two last blocks, at full and half resolution, are the costliest, and wide structures
  do not need them. Evidence: docs/results.md#planned-decoder-stride.
- Rates (with a pretrained encoder the plan picked, when not given): lr FINE_TUNE_LR and the encoder at
  ENCODER_LR_SHARE of it, not the defaults (1e-3; the encoder at lr/10 after the frozen start): a budget holds
  few epochs and the new decoder starts from random weights. Evidence: docs/results.md#planned-learning-rates.
- Frozen stages (with a pretrained encoder the plan picked, when not given): the stem and the stages down to
  stride 8 (FROZEN_STAGES) keep their ImageNet weights for the whole run, as mmseg's frozen_stages and
  detectron2's FREEZE_AT keep the first ones, on RGB and grayscale images alike (the first convolution summed
  from RGB). Their gradients are computed at the highest resolutions with few channels, a large share of the
  backward pass, and the candidates are timed without them, so the time saved buys epochs. The frozen start
  (FREEZE_SHARE of the expected epochs, 1 to MAX_FREEZE_EPOCHS) lets the new decoder learn on fixed features
  first. Evidence: docs/results.md#planned-frozen-stages.
- Batch: BATCH on CPU (a larger batch costs about the same per image there and gives fewer optimizer steps),
  lowered for datasets too small to fill two batches.
- Precision (CPU, when not given): one step of the cheapest candidate at the largest input is timed in
  float32 and under bfloat16 autocast (Lightning's bf16-mixed); bf16-mixed is planned when it is at least
  BF16_MIN_SPEEDUP times faster, and the candidates are then timed in it. CPUs with AMX or AVX512-BF16 run
  it faster; others emulate it and run it slower, so the choice is measured, not read from the CPU's flags.
  The largest input, not the smallest: small steps are dominated by fixed costs and vary more, and the
  probe's step at the largest input is one the plan times anyway. BF16_MIN_SPEEDUP sits below every speed-up
  measured on a CPU with bfloat16 instructions, so that two runs of one recipe plan alike.
  Evidence: docs/results.md#planned-precision.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from masksmith.core.devices import precision_for
from masksmith.data.sizes import as_size
from masksmith.models import build_model
from masksmith.models.freeze import freeze_encoder
from masksmith.planning.plan import SIZE_CAP, SIZE_STEP, PlanChoice, resized_structure_width

MIN_SHORT_SIDE = 128
MAX_LONG_RATIO = 2.0  # inputs at most twice as long as wide: panoramas are cropped, not squashed
MIN_STEPS = 600
MIN_EPOCHS = 8
BATCH = 8
VALIDATION_SHARE = 0.15  # of each epoch's time, for the validation pass (forward only, a fifth of the data)
TIMED_STEPS = 2
# Above timing noise, below every speed-up measured on CPUs with bfloat16 instructions (module doc); CPUs without
# them emulate it and run slower than float32.
BF16_MIN_SPEEDUP = 1.1
FLOAT32, BFLOAT16, FLOAT16 = "32", "bf16-mixed", "16-mixed"


@dataclass(frozen=True)
class Candidate:
    """One network the plan may train: an encoder name (None: the classic U-Net) at an input size, its decoder
    ending at `decoder_stride` (1: full resolution)."""

    encoder: str | None
    size: tuple[int, int]  # (height, width)
    decoder_stride: int = 1

    @property
    def name(self) -> str:
        """How the plan prints it: `efficientnet_lite0 U-Net`, `... U-Net, decoder to stride 4`, `classic U-Net`."""
        name = f"{self.encoder} U-Net" if self.encoder else "classic U-Net"
        return name + (f", decoder to stride {self.decoder_stride}" if self.decoder_stride != 1 else "")

    @property
    def pixels(self) -> int:
        """Input pixels: what the step time grows with, and what the plan prefers more of."""
        return self.size[0] * self.size[1]

    def model_options(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The `-m` options it trains with: the user's, and the planned decoder stride."""
        return {**(given or {}), **({"decoder_stride": self.decoder_stride} if self.decoder_stride != 1 else {})}


@dataclass(frozen=True)
class Fit:
    """A candidate with its measured cost and what the budget holds of it."""

    candidate: Candidate
    seconds_per_step: float
    steps: int
    epochs: float

    @property
    def fits(self) -> bool:
        """Whether the budget holds enough optimizer steps and epochs."""
        return self.steps >= MIN_STEPS and self.epochs >= MIN_EPOCHS


@dataclass(frozen=True)
class PrecisionProbe:
    """One candidate's step timed in float32 and in bfloat16 autocast, and the precision that wins."""

    candidate: Candidate
    float32_seconds: float
    bfloat16_seconds: float

    @property
    def speedup(self) -> float:
        """How many times faster the bfloat16 step is."""
        return self.float32_seconds / self.bfloat16_seconds if self.bfloat16_seconds > 0 else 0.0

    def seconds(self, precision: str) -> float:
        """The measured step time in `precision`."""
        return self.bfloat16_seconds if precision == BFLOAT16 else self.float32_seconds

    @property
    def precision(self) -> str:
        """bf16-mixed when it is at least BF16_MIN_SPEEDUP times faster, else 32."""
        return BFLOAT16 if self.speedup >= BF16_MIN_SPEEDUP else FLOAT32

    def reason(self, batch: int) -> str:
        """One line: both measured times, and the rule."""
        size = f"{self.candidate.size[0]}x{self.candidate.size[1]}"
        return (f"precision {self.precision}: a step of {batch} of the {self.candidate.name} at {size} took "
                f"{self.bfloat16_seconds:.2f} s in bfloat16, {self.float32_seconds:.2f} s in float32 "
                f"({self.speedup:.2f}x) on this CPU; bfloat16 autocast is planned when ≥ {BF16_MIN_SPEEDUP}x faster")


# encoder, size, batch, channels, classes, precision (and keyword model_options) -> seconds per optimizer step
StepTimer = Callable[..., float]


def aspect_sizes(median_width: float, median_height: float, cap: int) -> list[tuple[int, int]]:
    """Input sizes (height, width), largest first, keeping the median image's aspect ratio."""
    short, long = sorted((median_width, median_height))
    ratio = min(long / short, MAX_LONG_RATIO) if short > 0 else 1.0
    # Never upscaled: small images train at their own (rounded) size.
    top = max(SIZE_STEP, min(cap, int(short) // SIZE_STEP * SIZE_STEP))
    sizes = []
    for side in range(top, min(MIN_SHORT_SIDE, top) - 1, -SIZE_STEP):
        other = max(side, int(round(side * ratio / SIZE_STEP)) * SIZE_STEP)
        sizes.append((side, other) if median_width >= median_height else (other, side))
    return sizes


def time_training_step(encoder: str | None, size: tuple[int, int], batch: int, channels: int,
                       num_classes: int, precision: str = FLOAT32, *,
                       model_options: Mapping[str, Any] | None = None, frozen_stages: int = 0,
                       device: str = "cpu") -> float:
    """Seconds per optimizer step (forward, cross-entropy, backward, Adam) on random data on `device`, best of a
    few; precision bf16-mixed (16-mixed) runs the forward pass and loss under bfloat16 (float16) autocast, as
    Lightning does. `model_options`: the user's U-Net options (e.g. decoder_stride), timed as they will train;
    `frozen_stages`: the encoder's first stages frozen, as --frozen-stages trains them."""
    where = torch.device(device)
    network = build_model("unet", channels, num_classes, **dict(model_options or {}),
                          **({"encoder": encoder} if encoder else {})).to(where)
    if frozen_stages:
        freeze_encoder(network, False, stages=frozen_stages)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    images = torch.randn(batch, channels, *size, device=where)
    if where.type == "cuda":  # as training feeds a GPU (--channels-last auto)
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, num_classes, (batch, *size), device=where)
    autocast = {BFLOAT16: torch.bfloat16, FLOAT16: torch.float16}.get(precision)
    network.train()
    best = math.inf
    for attempt in range(TIMED_STEPS + 1):  # the first step warms up allocators and kernels
        if where.type == "cuda":
            torch.cuda.synchronize(where)
        started = time.perf_counter()
        with torch.autocast(where.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = F.cross_entropy(network(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if where.type == "cuda":  # kernels run asynchronously: the step ends when the GPU is done
            torch.cuda.synchronize(where)
        if attempt:
            best = min(best, time.perf_counter() - started)
    return best


def probe_precision(candidate: Candidate, *, batch: int, channels: int, num_classes: int,
                    timer: StepTimer = time_training_step,
                    model_options: Mapping[str, Any] | None = None) -> PrecisionProbe:
    """Time the candidate's step in float32 and in bfloat16 autocast (module doc: the precision rule)."""
    options = candidate.model_options(model_options)
    return PrecisionProbe(candidate,
                          timer(candidate.encoder, candidate.size, batch, channels, num_classes, FLOAT32,
                                model_options=options),
                          timer(candidate.encoder, candidate.size, batch, channels, num_classes, BFLOAT16,
                                model_options=options))


def plan_for_budget(encoders: list[str | None], sizes: list[tuple[int, int]], *, budget_seconds: float,
                    train_images: int, batch: int, channels: int, num_classes: int,
                    timer: StepTimer = time_training_step, precision: str = FLOAT32,
                    timed: dict[Candidate, float] | None = None,
                    model_options: Mapping[str, Any] | None = None,
                    stride_for: Callable[[tuple[int, int]], int] = lambda size: 1) -> tuple[Fit, list[Fit]]:
    """Time each network (`encoders` cheapest first; an encoder with the decoder stride `stride_for` gives each
    size) at the smallest and largest size it is planned for (in `precision`, with `model_options`; `timed` holds
    steps already measured so, which are not timed again), estimate the rest, and pick by the module's rule."""
    started = time.perf_counter()
    measured = dict(timed or {})
    candidates = [Candidate(encoder, size, stride_for(size)) for encoder in encoders for size in sizes]
    ends = _timed_ends(candidates)
    for candidate in {end for pair in ends.values() for end in pair}:
        if candidate not in measured:
            measured[candidate] = timer(candidate.encoder, candidate.size, batch, channels, num_classes, precision,
                                        model_options=candidate.model_options(model_options))
    left = max(0.0, budget_seconds - (time.perf_counter() - started)) * (1 - VALIDATION_SHARE)
    steps_per_epoch = max(1, train_images // batch)
    fits = []
    for candidate in candidates:
        seconds = _interpolate(measured, candidate, *ends[candidate.encoder, candidate.decoder_stride])
        steps = int(left / seconds) if seconds > 0 else 0
        fits.append(Fit(candidate, seconds, steps, steps / steps_per_epoch))
    fitting = [fit for fit in fits if fit.fits]
    if fitting:
        # Largest input first; then the larger encoder, later in `encoders` (cheapest first), not the slower
        # measured step: encoders a step apart time within each other's noise.
        best = max(fitting, key=lambda fit: (fit.candidate.pixels, encoders.index(fit.candidate.encoder)))
    else:
        best = min(fits, key=lambda fit: fit.seconds_per_step)
    return best, fits


def _timed_ends(candidates: list[Candidate]) -> dict[tuple[str | None, int], tuple[Candidate, Candidate]]:
    """For each network (encoder, decoder stride): its candidates at the largest and the smallest input."""
    networks: dict[tuple[str | None, int], list[Candidate]] = {}
    for candidate in candidates:
        networks.setdefault((candidate.encoder, candidate.decoder_stride), []).append(candidate)
    pixels = attrgetter("pixels")
    return {network: (max(group, key=pixels), min(group, key=pixels)) for network, group in networks.items()}


def _interpolate(measured: dict[Candidate, float], candidate: Candidate, largest: Candidate,
                 smallest: Candidate) -> float:
    """Step time at the candidate's size: linear in pixels between its network's two measured sizes."""
    low, high = measured[smallest], measured[largest]
    if largest.pixels == smallest.pixels:
        return high
    share = (candidate.pixels - smallest.pixels) / (largest.pixels - smallest.pixels)
    return low + share * (high - low)


def budget_reason(best: Fit, fits: list[Fit], budget_seconds: float, batch: int, precision: str = FLOAT32,
                  model_options: Mapping[str, Any] | None = None) -> str:
    """One line saying what was measured (with the user's `model_options`) and why this candidate won."""
    candidate = best.candidate
    given = "".join(f" -m {name}={value}" for name, value in (model_options or {}).items())
    measured = sorted({fit.candidate.encoder for fit in fits}, key=lambda e: e or "")
    in_bf16 = {BFLOAT16: " in bfloat16", FLOAT16: " in float16"}.get(precision, "")
    rule = (f"the largest input fitting ≥ {MIN_STEPS} steps and ≥ {MIN_EPOCHS} epochs in "
            f"{budget_seconds / 60:.0f} min" if best.fits else
            f"nothing fits {MIN_STEPS} steps and {MIN_EPOCHS} epochs in {budget_seconds / 60:.0f} min: the cheapest")
    return (f"{candidate.name}{given} at {candidate.size[0]}x{candidate.size[1]} (aspect kept): "
            f"{best.seconds_per_step:.2f} s a step of {batch} (measured{in_bf16}), ~{best.steps} steps, "
            f"~{best.epochs:.0f} epochs; {rule} (timed: {', '.join(e or 'classic' for e in measured)})")


def describe_fits(fits: list[Fit], precision: str = FLOAT32) -> list[dict[str, Any]]:
    """The candidates as JSON-ready rows for plan.json (timed in `precision`)."""
    return [{"encoder": fit.candidate.encoder, "decoder_stride": fit.candidate.decoder_stride,
             "size": list(fit.candidate.size), "precision": precision,
             "seconds_per_step": round(fit.seconds_per_step, 4), "steps": fit.steps,
             "epochs": round(fit.epochs, 1), "fits": fit.fits} for fit in fits]


# --------------------------------------------------------------------------- the plan's network choice

# `-m` options of the encoder U-Net's decoder: given with a decoder stride, the plan still picks the encoder.
ENCODER_UNET_OPTIONS = {"decoder_stride", "base_channels", "upsampling", "dropout"}
FREEZE_SHARE, MAX_FREEZE_EPOCHS = 0.1, 5
FROZEN_STAGES = 3  # a planned encoder's stages kept frozen for the whole run: strides 2, 4 and 8 (module doc)
# A planned encoder's decoder stops at COARSE_STRIDE when the structures stay MIN_OUTPUT_WIDTH px wide there.
COARSE_STRIDE, MIN_OUTPUT_WIDTH = 4, 2.0
# The fine-tuning rates a planned pretrained encoder gets (module doc): measured, not derived from the data.
FINE_TUNE_LR, ENCODER_LR_SHARE = 2e-3, 0.5
EPOCH_HEADROOM = 2  # the epochs cap, over the estimate: the budget, not the cap, should end a budgeted run


def installed_encoders() -> list[str]:
    """Encoders of the built-in U-Net whose ImageNet weights are installed, cheapest first."""
    from masksmith.errors import ConfigError
    from masksmith.models.encoders import ENCODERS, pretrained_weights_file

    found = []
    for name in ENCODERS:
        try:
            pretrained_weights_file(name, "imagenet")
        except ConfigError:
            continue
        found.append(name)
    return found


def plan_network(fp: dict[str, Any], *, given: set[str], known: dict[str, Any], device: str,
                 max_time: float | None, epochs: int, timer: StepTimer = time_training_step,
                 encoders: list[str] | None = None) -> tuple[list[PlanChoice], list[dict[str, Any]]]:
    """Choose the U-Net's encoder (with weights, freeze schedule and normalization), the input size and the
    batch; with a time budget by measured steps (module doc). Returns the PlanChoices and, for plan.json, the
    timed candidates. Plans nothing for other models or when the user set model options, except a decoder stride
    (it needs an encoder: the candidates are timed with it)."""
    from masksmith.models.encoders import pretrained_normalization

    sizes_fp = fp.get("image_size") or {}
    median_w, median_h = float(sizes_fp.get("median_width") or 0), float(sizes_fp.get("median_height") or 0)
    options = dict(known.get("model_options") or {}) if "model_options" in given else {}
    encoder_options = options.get("decoder_stride", 1) != 1 and set(options) <= ENCODER_UNET_OPTIONS
    if known.get("model", "unet") != "unet" or (options and not encoder_options) or not median_w or not median_h:
        return [], []
    channels = int(fp.get("channels") or 3)
    num_classes = int(fp.get("num_classes") or 2)
    train_images = _training_images(fp, known)
    if "encoder" in given:
        candidates: list[str | None] = [known.get("encoder")]
    elif {"model", "weights"} & given or channels not in (1, 3):
        candidates = [None]  # `--model unet` alone (or with a weights file) keeps the classic U-Net
    else:
        candidates = list(installed_encoders() if encoders is None else encoders) or [None]
    pretrained = candidates[0] is not None and "encoder" not in given
    # The encoder's first stages: the user's, else frozen for a planned encoder (module doc).
    frozen_stages = int(known.get("frozen_stages") or 0) if "frozen_stages" in given else (
        FROZEN_STAGES if pretrained else 0)
    if frozen_stages:
        timer = partial(timer, frozen_stages=frozen_stages)  # the candidates are timed as they will train

    def stride_for(size: tuple[int, int]) -> int:
        """The planned decoder stride at an input size: COARSE_STRIDE where the structures stay wide (module doc)."""
        width = resized_structure_width(fp, min(size))
        coarse = pretrained and not options and width is not None and width / COARSE_STRIDE >= MIN_OUTPUT_WIDTH
        return COARSE_STRIDE if coarse else 1

    if "size" in given:
        sizes = [as_size(known["size"])] if "size" in known else []
    else:
        sizes = aspect_sizes(median_w, median_h, SIZE_CAP[device])
    batch = int(known.get("batch_size") or _batch_for(train_images))
    fits: list[Fit] = []
    if not sizes:
        return [], []
    choices: list[PlanChoice] = []
    precision = known.get("precision", FLOAT32)
    if device != "cpu":
        # Timed where and as the run trains: on the GPU, in 16-bit mixed unless a precision was given.
        timer = partial(timer, device=device)
        resolved = precision_for(known.get("precision", "auto") if "precision" in given else "auto", gpu=True)
        precision = FLOAT32 if resolved == "32-true" else resolved
    timed: dict[Candidate, float] = {}
    if max_time is not None and device == "cpu" and "precision" not in given:
        probe = probe_precision(Candidate(candidates[0], sizes[0], stride_for(sizes[0])), batch=batch,
                                channels=channels, num_classes=num_classes, timer=timer, model_options=options)
        precision = probe.precision
        timed[probe.candidate] = probe.seconds(precision)  # not timed twice
        choices.append(PlanChoice("precision", precision, probe.reason(batch)))
    if max_time is not None:
        best, fits = plan_for_budget(candidates, sizes, budget_seconds=60 * max_time, train_images=train_images,
                                     batch=batch, channels=channels, num_classes=num_classes, timer=timer,
                                     precision=precision, timed=timed, model_options=options, stride_for=stride_for)
        chosen = best.candidate
        reason, expected_epochs = budget_reason(best, fits, 60 * max_time, batch, precision, options), best.epochs
        capped = math.ceil(EPOCH_HEADROOM * expected_epochs)
        if "epochs" not in given and capped > epochs:
            choices.append(PlanChoice("epochs", capped, (
                f"epochs {capped}: ~{expected_epochs:.0f} fit in {max_time:g} min (measured), so the budget ends "
                f"training, not the default {epochs}; the schedule is fitted to the epochs that fit")))
        if "early_stopping" not in given:
            choices.append(PlanChoice("early_stopping", 0, (
                "early stopping off: the budget ends training and the schedule anneals by its end; patience would "
                "stop it with the rate still high (the best epoch is kept either way)")))
    else:
        chosen = Candidate(candidates[0], sizes[0], stride_for(sizes[0]))
        reason = (f"{chosen.name}, aspect kept, short side capped at {SIZE_CAP[device]} on "
                  f"{device}; no --max-time, so not fitted to a time budget")
        expected_epochs = float(epochs)
    encoder, size = chosen.encoder, chosen.size
    if pretrained and encoder is not None:
        few = " are few to learn features from scratch" if train_images < 2000 else ""
        kind = "RGB photos" if channels == 3 else "grayscale images (first convolution summed from RGB)"
        choices.append(PlanChoice("encoder", encoder, f"{encoder}: ImageNet weights installed; {train_images} "
                                                      f"training images{few}; ImageNet features transfer to {kind}"))
        choices.append(PlanChoice("weights", "imagenet", f"imagenet: the installed checkpoint of {encoder}"))
        lr = float(known.get("lr", FINE_TUNE_LR))
        if "lr" not in given:
            choices.append(PlanChoice("lr", FINE_TUNE_LR, (
                f"lr {FINE_TUNE_LR:g}: the decoder is new (random weights) and a budget holds few epochs; twice the "
                "from-scratch default, measured ahead on the clothing photos and the membranes (docs/results.md)")))
        encoder_lr = float(known.get("encoder_lr") or lr * ENCODER_LR_SHARE)
        if "encoder_lr" not in given:
            choices.append(PlanChoice("encoder_lr", encoder_lr, (
                f"encoder lr {encoder_lr:g}: lr x {ENCODER_LR_SHARE:g}; the pretrained features are tuned more gently "
                "than the new decoder, but they must still adapt within a few epochs")))
        if "freeze_encoder_epochs" not in given:
            freeze = max(1, min(MAX_FREEZE_EPOCHS, int(round(FREEZE_SHARE * expected_epochs))))
            choices.append(PlanChoice("freeze_encoder_epochs", freeze, (
                f"freeze {freeze}: the new decoder learns on the frozen encoder first (~{FREEZE_SHARE:.0%} of "
                f"~{expected_epochs:.0f} epochs), then the encoder is fine-tuned at {encoder_lr:g}")))
        if frozen_stages and "frozen_stages" not in given:
            choices.append(PlanChoice("frozen_stages", frozen_stages, (
                f"frozen stages {frozen_stages}: the stem and the layers down to stride {2 ** frozen_stages} keep "
                "their ImageNet weights (generic edges and textures); the backward pass stops before them, at the "
                "highest resolutions, and the time saved buys epochs")))
        normalization = pretrained_normalization(encoder, "imagenet", channels)
        for option, values in zip(("mean", "std"), normalization or ()):
            if option not in given:
                choices.append(PlanChoice(option, [round(v, 4) for v in values],
                                          f"{option}: {encoder}'s pretraining normalization"))
        if chosen.decoder_stride != 1:
            width = resized_structure_width(fp, min(size)) or 0.0
            choices.append(PlanChoice("model_options", chosen.model_options(), (
                f"decoder_stride {chosen.decoder_stride}: the labelled structures, {width:.1f} px wide at "
                f"{size[0]}x{size[1]}, are {width / chosen.decoder_stride:.1f} px at stride {chosen.decoder_stride} "
                f"(≥ {MIN_OUTPUT_WIDTH:g}): the decoder stops there and upsamples its logits, skipping its two "
                "costliest blocks")))
    if "size" not in given:
        value = int(size[0]) if size[0] == size[1] else [int(size[0]), int(size[1])]
        choices.append(PlanChoice("size", value, f"size {size[0]}x{size[1]}: {reason}"))
    if "batch_size" not in given:
        few_images = f"; {train_images} training images" if batch < BATCH else ""
        choices.append(PlanChoice("batch_size", batch, f"batch {batch}: on {device} a larger batch costs about the "
                                                      f"same per image and gives fewer optimizer steps{few_images}"))
    return choices, describe_fits(fits, precision)


def _training_images(fp: dict[str, Any], known: dict[str, Any]) -> int:
    """Training images: the train split, or what the validation share leaves of all pairs."""
    splits = fp.get("splits") or {}
    if "train" in splits:
        return int(splits["train"])
    return max(1, int(round(int(fp.get("train_images") or 1) * (1 - float(known.get("val_fraction", 0.2))))))


def _batch_for(train_images: int) -> int:
    """BATCH, halved until two batches fit in the training images (at least 2)."""
    batch = BATCH
    while batch > 2 and 2 * batch > train_images:
        batch //= 2
    return batch

