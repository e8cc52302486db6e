"""Milliseconds of a loss's forward and backward pass on CPU: masksmith's `dice+ce` against autograd.

    python benchmarks/loss_speed.py [--size 384x256] [--batch 8] [--classes 2 21 59] [--rounds 5]

For each class count, the loss of random float32 logits (N x K x H x W, 5% of the pixels ignored, class
weights) is computed and back-propagated: torch's F.cross_entropy (the floor: one softmax), masksmith's `ce`,
the soft Dice + cross-entropy as autograd computed it before softmax_dice.py (the baseline, written out below as
it was in losses.py), and masksmith's `dice+ce` now. Rows are timed interleaved (one call of each in turn), so
other load slows them alike; each number is the median call. The last column compares both dice+ce gradients
with the baseline's in float64 (the largest difference, over the largest gradient).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from masksmith.models.heads import best_class
from masksmith.training.losses import build_loss

IGNORE = 255


def autograd_dice_plus_ce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The baseline: soft Dice (classes in truth or prediction, weighted) + weighted CE, through autograd."""
    valid = target != IGNORE
    safe = torch.where(valid, target, 0)
    k = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    mass = torch.einsum("nkhw,nhw->k", probs, valid.to(probs.dtype))
    true_bin = torch.where(valid, safe, k).flatten()
    intersection = probs.new_zeros(k + 1).index_add(0, true_bin, probs.gather(1, safe[:, None]).flatten())[:k]
    truth = torch.bincount(true_bin, minlength=k + 1)[:k].to(probs.dtype)
    predicted = torch.bincount(torch.where(valid, best_class(logits, dim=1), k).flatten(), minlength=k + 1)[:k]
    dice = (2.0 * intersection + 1.0) / (mass + truth + 1.0)
    used = ((truth > 0) | (predicted > 0)).to(probs.dtype) * weights
    dice_loss = 1.0 - (dice * used).sum() / used.sum()
    return dice_loss + F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)


def timed(loss: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds of one forward and backward pass, and the gradient."""
    leaf = logits.detach().requires_grad_()
    started = time.perf_counter()
    loss(leaf).backward()
    return time.perf_counter() - started, leaf.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="384x256", help="HxW of the logits [384x256]")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 21, 59])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.split("x"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; logits {args.batch}xKx{height}x{width}, "
          f"5% ignored, class weights; median of {args.rounds} calls, forward + backward")
    print("\n| classes | F.cross_entropy ms | masksmith `ce` ms | dice+ce, autograd (before) ms | masksmith `dice+ce` ms "
          "| speed-up | gradient error vs float64: before / now |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    generator = torch.Generator().manual_seed(0)
    for k in args.classes:
        logits = torch.randn(args.batch, k, height, width, generator=generator) * 3
        target = torch.randint(0, k, (args.batch, height, width), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.05] = IGNORE
        weights = torch.rand(k, generator=generator) + 0.5
        ce = build_loss("ce", num_classes=k, ignore_index=IGNORE, class_weights=weights.tolist())
        dice_ce = build_loss("dice+ce", num_classes=k, ignore_index=IGNORE, class_weights=weights.tolist())
        rows: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "torch": lambda z: F.cross_entropy(z, target, ignore_index=IGNORE),
            "ce": lambda z: ce(z, target),
            "before": lambda z: autograd_dice_plus_ce(z, target, weights),
            "now": lambda z: dice_ce(z, target),
        }
        seconds: dict[str, list[float]] = {name: [] for name in rows}
        gradients: dict[str, torch.Tensor] = {}
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, loss in rows.items():
                spent, gradients[name] = timed(loss, logits)
                seconds[name].append(spent)
        ms = {name: 1000 * statistics.median(values[1:]) for name, values in seconds.items()}
        _, exact = timed(lambda z: autograd_dice_plus_ce(z, target, weights.double()), logits.double())
        error = {name: float((gradients[name].double() - exact).abs().max() / exact.abs().max())
                 for name in ("before", "now")}
        print(f"| {k} | {ms['torch']:.0f} | {ms['ce']:.0f} | {ms['before']:.0f} | {ms['now']:.0f} "
              f"| {ms['before'] / ms['now']:.2f}x | {error['before']:.1e} / {error['now']:.1e} |")


if __name__ == "__main__":
    main()
