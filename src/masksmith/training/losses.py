"""Segmentation losses (bce, ce, dice, focal) and weighted sums of them, all honouring ignore_index.

Conventions shared by every loss here:

* `num_classes` is the number of classes in the masks; binary is `num_classes=2`.
* The logits are N x C x H x W and the target N x H x W class indices. C == num_classes means a
  softmax head; C == 1 (only with num_classes == 2) means a sigmoid head whose single channel is
  the foreground (class 1) logit.
* Pixels whose target equals `ignore_index` contribute nothing to the value nor to the gradient;
  a batch with no counted pixel has loss 0 (not NaN).
* `class_weights` (one non-negative float per class) weight each counted pixel by the weight of
  its true class, and the loss is the weighted mean sum(w * l) / sum(w), as in
  `torch.nn.functional.cross_entropy`. For a 1-channel head that is BCE with
  pos_weight = w[1] / w[0], normalised. Dice instead weights the per-class Dice terms.
* Losses are computed in float32 whatever the logits' dtype, so mixed precision stays stable.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masksmith.core.registry import Registry, did_you_mean
from masksmith.errors import ConfigError, DataError
from masksmith.training.softmax_dice import softmax_dice_cross_entropy

LOSSES = Registry("loss")


class SegmentationLoss(nn.Module):
    """Base for the losses here: validates inputs and holds num_classes, ignore_index, weights."""

    name = "loss"

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int,
        class_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(
                f"loss {self.name!r}: num_classes must be an integer >= 2 (binary is 2; a "
                f"1-channel sigmoid head is chosen by the model's out_channels), got {num_classes!r}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        if class_weights is None:
            self.register_buffer("class_weights", None)
        else:
            weights = [float(w) for w in class_weights]
            if len(weights) != num_classes:
                raise ConfigError(
                    f"loss {self.name!r}: class_weights has {len(weights)} values, "
                    f"expected one per class ({num_classes})"
                )
            if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) == 0:
                raise ConfigError(
                    f"loss {self.name!r}: class_weights must be finite, >= 0 and not all 0, "
                    f"got {weights}"
                )
            # A buffer, so it follows the module to the logits' device with `.to()`.
            self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32))

    def _prepare(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Check shapes and values; return float32 logits, a safe target (ignored -> 0), the valid mask."""
        if logits.dim() != 4:
            raise ValueError(f"loss {self.name!r}: logits must be N x C x H x W, got {tuple(logits.shape)}")
        n, channels, height, width = logits.shape
        if target.shape != (n, height, width):
            raise ValueError(
                f"loss {self.name!r}: target shape {tuple(target.shape)} does not match logits "
                f"{tuple(logits.shape)} (expected N x H x W = {(n, height, width)})"
            )
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(
                f"loss {self.name!r}: target must hold integer class indices, got {target.dtype}"
            )
        if channels != self.num_classes and not (channels == 1 and self.num_classes == 2):
            raise ConfigError(
                f"loss {self.name!r}: logits have {channels} channels but num_classes is "
                f"{self.num_classes} (expected {self.num_classes}, or 1 for a binary sigmoid head)"
            )
        target = target.long()
        valid = target != self.ignore_index
        counted = target[valid]
        # Checked here because out-of-range classes would otherwise crash deep inside an
        # indexing kernel, or silently train on garbage for the sigmoid losses.
        if counted.numel() and (counted.min() < 0 or counted.max() >= self.num_classes):
            raise DataError(
                f"mask values {sorted(set(counted.unique().tolist()) - set(range(self.num_classes)))} "
                f"are outside 0..{self.num_classes - 1} and not ignore_index={self.ignore_index}; "
                f"check num_classes and the mask encoding"
            )
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        return logits.float(), safe_target, valid

    def _pixel_weights(self, safe_target: Tensor, valid: Tensor) -> Tensor:
        """Per-pixel weights: the class weight of the true class, 0 at ignored pixels."""
        weights = valid.float()
        if self.class_weights is not None:
            weights = weights * self.class_weights[safe_target]
        return weights

    @staticmethod
    def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
        # where() instead of multiplying: an ignored pixel's loss may be inf/NaN for extreme
        # logits, and 0 * inf would leak NaN into the sum and the gradient.
        total = torch.where(weights > 0, values * weights, torch.zeros_like(values)).sum()
        # All pixels ignored -> total is exactly 0, so clamping the denominator yields 0, not NaN.
        return total / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


@LOSSES.register("ce")
class CrossEntropyLoss(SegmentationLoss):
    """Softmax cross-entropy; equals F.cross_entropy(logits, target, weight, ignore_index)."""

    name = "ce"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Weighted mean cross-entropy over non-ignored pixels."""
        if logits.dim() == 4 and logits.shape[1] == 1:
            raise ConfigError(
                "loss 'ce' needs a softmax head with num_classes >= 2 channels, got 1 channel; "
                "use 'bce', 'dice' or 'focal' for a 1-channel sigmoid head"
            )
        logits, safe_target, valid = self._prepare(logits, target)
        per_pixel = F.cross_entropy(logits, safe_target, reduction="none")
        return self._weighted_mean(per_pixel, self._pixel_weights(safe_target, valid))


def _foreground_logit(logits: Tensor) -> Tensor:
    """The binary log-odds of class 1, N x H x W, for a 1-channel or a 2-channel softmax head."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    # softmax([a, b])[1] == sigmoid(b - a), so BCE on the difference is exactly 2-class CE.
    return logits[:, 1] - logits[:, 0]


@LOSSES.register("bce")
class BinaryCrossEntropyLoss(SegmentationLoss):
    """Binary cross-entropy for a 1-channel sigmoid head, or a 2-channel head via logit difference.

    With 2 channels the foreground log-odds are logits[:, 1] - logits[:, 0], which makes the value
    identical to 2-class cross-entropy. Class weights [w0, w1] act as a (normalised) pos_weight.
    """

    name = "bce"

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int,
        class_weights: Sequence[float] | None = None,
    ):
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        if num_classes != 2:
            raise ConfigError(
                f"loss 'bce' is for binary masks (num_classes=2), got num_classes={num_classes}; "
                f"use 'ce' for multi-class"
            )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Weighted mean binary cross-entropy over non-ignored pixels."""
        logits, safe_target, valid = self._prepare(logits, target)
        per_pixel = F.binary_cross_entropy_with_logits(
            _foreground_logit(logits), safe_target.float(), reduction="none"
        )
        return self._weighted_mean(per_pixel, self._pixel_weights(safe_target, valid))


@LOSSES.register("focal")
class FocalLoss(SegmentationLoss):
    """Focal loss (Lin et al.): cross-entropy scaled by (1 - p_true) ** gamma; sigmoid or softmax.

    Class weights play the role of the alpha balancing term; the value is the weighted mean.
    """

    name = "focal"

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int,
        class_weights: Sequence[float] | None = None,
        gamma: float = 2.0,
    ):
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        if gamma < 0:
            raise ConfigError(f"loss 'focal': gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Weighted mean focal loss over non-ignored pixels."""
        logits, safe_target, valid = self._prepare(logits, target)
        if logits.shape[1] == 1:
            log_p_true = -F.binary_cross_entropy_with_logits(
                logits[:, 0], safe_target.float(), reduction="none"
            )
        else:
            log_p_true = torch.log_softmax(logits, dim=1).gather(1, safe_target[:, None])[:, 0]
        # Working from log p keeps this finite for confident logits, where p itself rounds to 1.
        per_pixel = -((1.0 - log_p_true.exp()) ** self.gamma) * log_p_true
        return self._weighted_mean(per_pixel, self._pixel_weights(safe_target, valid))


@LOSSES.register("dice")
class DiceLoss(SegmentationLoss):
    """Soft Dice loss, 1 - mean Dice, computed over the whole batch (not per image).

    Softmax head: one soft Dice per class, (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)
    over non-ignored pixels, averaged (class-weighted when class_weights is given) over the
    classes present in the batch's target OR in its argmax prediction. Classes absent from both
    are left out: their Dice is undefined, and with the smooth term it would only push the
    probabilities of a class the batch does not hold, adding noise.
    1-channel sigmoid head: Dice of the foreground (class 1) only, under the same rule (loss 0
    when neither truth nor prediction has foreground); class weights then have no effect.
    """

    name = "dice"

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int,
        class_weights: Sequence[float] | None = None,
        smooth: float = 1.0,
    ):
        super().__init__(num_classes, ignore_index=ignore_index, class_weights=class_weights)
        if smooth < 0:
            raise ConfigError(f"loss 'dice': smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """1 - mean soft Dice over the classes present in the batch target or prediction."""
        logits, safe_target, valid = self._prepare(logits, target)
        if logits.shape[1] > 1:  # softmax: one Dice per class, gradient written out (softmax_dice.py)
            return softmax_dice_cross_entropy(logits, safe_target, valid, self.class_weights, self.smooth)[0]
        # where() rather than multiplying by the mask: only ignored pixels are dropped, and
        # their gradient is exactly zero.
        probs = torch.where(valid[:, None], torch.sigmoid(logits), torch.zeros_like(logits))
        truth = (safe_target[:, None] == 1) & valid[:, None]
        intersection = (probs * truth).sum()
        dice = (2.0 * intersection + self.smooth) / (probs.sum() + truth.sum() + self.smooth).clamp_min(1e-12)
        present = ((truth.sum() > 0) | ((logits > 0) & valid[:, None]).any()).float()
        # Nothing present (e.g. every pixel ignored) -> 0 with a graph, rather than 0/0.
        return (1.0 - dice) * present


class WeightedSumLoss(nn.Module):
    """A weighted sum of named losses; `last_parts` holds the detached terms of the last call."""

    def __init__(self, terms: dict[str, tuple[float, nn.Module]]):
        super().__init__()
        self.weights = {name: weight for name, (weight, _) in terms.items()}
        self.terms = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.last_parts: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Sum of weight * loss(logits, target) over the terms."""
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name, module in self.terms.items():
            value = module(logits, target)
            parts[name] = value.detach()
            total = self.weights[name] * value if total is None else total + self.weights[name] * value
        self.last_parts = parts
        assert total is not None  # build_loss never creates an empty sum
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{weight:g}*{name}" for name, weight in self.weights.items())


class DiceCrossEntropyLoss(WeightedSumLoss):
    """`dice+ce` (any weights): for a softmax head both terms come from one softmax (softmax_dice.py: less than
    half the autograd version's time for 59 classes); a 1-channel head sums the two modules as WeightedSumLoss does."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        dice = self.terms["dice"]
        if logits.dim() != 4 or logits.shape[1] == 1:
            return super().forward(logits, target)  # the modules' own checks and messages
        logits, safe_target, valid = dice._prepare(logits, target)
        dice_value, ce_value = softmax_dice_cross_entropy(logits, safe_target, valid, dice.class_weights, dice.smooth)
        self.last_parts = {"dice": dice_value.detach(), "ce": ce_value.detach()}
        return self.weights["dice"] * dice_value + self.weights["ce"] * ce_value


_TERM = re.compile(r"^(?:(?P<weight>\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?(?P<name>[A-Za-z_][\w-]*)$")


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """Parse "0.5*dice + ce" into [(0.5, "dice"), (1.0, "ce")]; ConfigError when malformed."""
    valid = ", ".join(LOSSES.names())
    example = "e.g. 'ce', 'dice+ce' or '0.5*dice + 1*ce'"
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty loss spec {spec!r}; valid losses: {valid} ({example})")
    terms: list[tuple[float, str]] = []
    for raw in spec.split("+"):
        match = _TERM.match(raw.strip())
        if match is None:
            raise ConfigError(
                f"cannot read loss term {raw.strip()!r} in {spec!r}; valid losses: {valid} ({example})"
            )
        name = match["name"].lower()
        if name not in LOSSES:
            raise ConfigError(f"unknown loss {name!r} in {spec!r}; valid losses: {valid}"
                              f"{did_you_mean(name, LOSSES.names())}")
        if any(name == seen for _, seen in terms):
            raise ConfigError(f"loss {name!r} appears twice in {spec!r}; give it one weight")
        terms.append((float(match["weight"]) if match["weight"] else 1.0, name))
    return terms


def build_loss(
    spec: str,
    *,
    num_classes: int,
    ignore_index: int,
    class_weights: Sequence[float] | None = None,
) -> nn.Module:
    """Build the loss named by `spec` ("dice", "dice+ce", "0.5*dice + 1*ce"); forward gives the sum."""
    terms = {
        name: (weight, LOSSES.get(name)(num_classes, ignore_index=ignore_index, class_weights=class_weights))
        for weight, name in parse_loss_spec(spec)
    }
    return DiceCrossEntropyLoss(terms) if set(terms) == {"dice", "ce"} else WeightedSumLoss(terms)
