"""Print the auto plan's class weights for a dataset's seeded training split, as one --class-weights value.

    python benchmarks/class_weights.py DATA [--classes N] [--val-fraction 0.2] [--seed 42]

The recipes in experiments.py run with --no-auto, so they train without the class weights the plan would give
imbalanced data; this prints those weights (masksmith.planning.plan.class_weights: 1/sqrt(pixel frequency), a pixel mean
of 1, capped) from the pixel counts of the training masks of the split `masksmith train` makes with the same
--val-fraction and --seed, for `benchmarks/run.sh RECIPE -- --class-weights "$(python benchmarks/class_weights.py DATA)"`.
Index masks only (a pixel's value is its class).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

from masksmith.config import TrainConfig
from masksmith.data.discover import discover
from masksmith.planning.plan import class_weights
from masksmith.training.prepare import split_pairs


def training_pixel_counts(data: str, classes: int, val_fraction: float, seed: int) -> np.ndarray:
    """Pixels per class over the training masks of the seeded split (values >= classes are not counted)."""
    # The split `masksmith train` makes: its split folders, or the seeded random split of its pool.
    train = split_pairs(TrainConfig(data=data, val_fraction=val_fraction, seed=seed), discover(data))[0]
    counts = np.zeros(classes, dtype=np.int64)
    for sample in train:
        with Image.open(sample.mask) as mask:
            counts += np.bincount(np.asarray(mask).ravel(), minlength=256)[:classes]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--classes", type=int, default=59)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    counts = training_pixel_counts(args.data, args.classes, args.val_fraction, args.seed)
    weights, capped, unseen = class_weights(list(counts / counts.sum()))
    print(f"{counts.sum()} training pixels; {len(capped)} classes capped; never seen: {unseen}", file=sys.stderr)
    print(",".join(f"{weight:g}" for weight in weights))


if __name__ == "__main__":
    main()
