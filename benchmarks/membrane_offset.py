"""Where the ISBI membrane labels sit against the membranes they trace, and what flips do about it.

    python benchmarks/membrane_offset.py [BUNDLE ...]

Part 1 (the data alone): the correlation of each slice's darkness (membranes are dark; Gaussian-smoothed,
sigma 1 px) with its membrane label moved by dy, dx in -2..2 pixels, summed over the 30 training slices, and
the peak refined to sub-pixel by a parabola through it and its neighbours. A peak away from (0, 0) means the
labels are drawn off the membranes' centre lines by that much.

Part 2 (per BUNDLE, a model trained by `benchmarks/run.sh membrane...`): the pixel error on the recipe's 6
held-out slices (the same seeded split) when the predicted mask is moved by one pixel up, down, left or right,
predicting the slice as it is and flipped upside down and left-right (then flipped back). A model that cannot
follow the labels' offset errs on one side of every membrane; moving its output toward the labels lowers the
error, and flipping the input moves its output the other way. The last column is the share of the wrong
pixels (as predicted) that lie within one pixel of a label's edge; the last row per bundle scores 6 of the
slices it trained on, to tell underfitting from overfitting.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import MEMBRANE  # noqa: E402

from masksmith.data.discover import discover, split_samples  # noqa: E402
from masksmith.data.encoding import MaskEncoding  # noqa: E402
from masksmith.data.images import read_image  # noqa: E402
from masksmith.data.masks import read_mask  # noqa: E402

MOVES = {"as predicted": (0, 0), "1 px up": (-1, 0), "1 px down": (1, 0), "1 px left": (0, -1), "1 px right": (0, 1)}


def read_pair(sample) -> tuple[np.ndarray, np.ndarray]:
    """The slice (H x W uint8) and its membrane label (the recipes' `--foreground 0`: mask value 0 is membrane)."""
    membrane = read_mask(sample.mask, MaskEncoding("binary", 0), 2) == 1
    return read_image(sample.image, channels=1)[:, :, 0], membrane


def parabola_peak(left: float, centre: float, right: float) -> float:
    """Sub-pixel offset of a peak from three samples at -1, 0, +1."""
    return 0.5 * (left - right) / (left - 2 * centre + right)


def label_offset(samples) -> tuple[np.ndarray, tuple[float, float]]:
    """Correlation grid (5 x 5, dy and dx in -2..2) and the sub-pixel peak (dy, dx) that moves labels onto
    the dark lines."""
    grid = np.zeros((5, 5))
    for sample in samples:
        image, label = read_pair(sample)
        darkness = ndi.gaussian_filter(255.0 - image, 1.0)
        darkness -= darkness.mean()
        centred = label - label.mean()
        for row, dy in enumerate(range(-2, 3)):
            for col, dx in enumerate(range(-2, 3)):
                grid[row, col] += (np.roll(centred, (dy, dx), (0, 1)) * darkness)[4:-4, 4:-4].mean()
    grid /= len(samples)
    row, col = np.unravel_index(grid.argmax(), grid.shape)
    row, col = min(max(row, 1), 3), min(max(col, 1), 3)
    peak = (row - 2 + parabola_peak(*grid[row - 1:row + 2, col]), col - 2 + parabola_peak(*grid[row, col - 1:col + 2]))
    return grid, peak


def moved_errors(bundle: str, samples, flipped: bool) -> dict[str, float]:
    """Mean pixel error of the bundle's masks, moved as MOVES says (a 2 px frame left out), and the share of the
    unmoved masks' errors within one pixel of a label edge."""
    from masksmith.inference.predictor import Predictor

    predictor = Predictor.load(bundle)
    errors = dict.fromkeys(MOVES, 0.0)
    wrong_pixels = near_edge = 0
    for sample in samples:
        image, truth = read_pair(sample)
        seen = np.ascontiguousarray(image[::-1, ::-1] if flipped else image)
        membrane = predictor.probabilities([seen[:, :, None]])[0][1].numpy()
        if flipped:
            membrane = membrane[::-1, ::-1]
        predicted = membrane > 0.5
        for name, move in MOVES.items():
            wrong = np.roll(predicted, move, (0, 1)) != truth
            errors[name] += float(wrong[2:-2, 2:-2].mean()) / len(samples)
        edge = ndi.binary_dilation(truth) & ~ndi.binary_erosion(truth)
        wrong = predicted != truth
        wrong_pixels, near_edge = wrong_pixels + int(wrong.sum()), near_edge + int((wrong & edge).sum())
    errors["wrong pixels at an edge"] = near_edge / max(wrong_pixels, 1)
    return errors


def main() -> None:
    torch.set_num_threads(1)
    pool = discover(MEMBRANE / "train")["all"]
    grid, (dy, dx) = label_offset(pool)
    print(f"Part 1: correlation of darkness and labels moved by (dy, dx), {len(pool)} slices")
    print("| dy \\ dx | " + " | ".join(str(d) for d in range(-2, 3)) + " |")
    print("| --- |" + " ---: |" * 5)
    for row, shift in enumerate(range(-2, 3)):
        print(f"| {shift} | " + " | ".join(f"{value:.2f}" for value in grid[row]) + " |")
    print(f"peak: move the labels by dy = {dy:+.2f}, dx = {dx:+.2f} px to centre them on the dark lines\n")

    trained_on, held_out = split_samples(pool, 0.2, 42)  # the `membrane` recipes' validation slices
    if sys.argv[1:]:
        print(f"Part 2: pixel error on the {len(held_out)} held-out slices, the predicted mask moved")
        print("| model | slices | input | " + " | ".join(MOVES) + " | wrong pixels at an edge |")
        print("| --- | --- | --- |" + " ---: |" * (len(MOVES) + 1))
    for bundle in sys.argv[1:]:
        for slices, samples, flipped in (("held out", held_out, False), ("held out", held_out, True),
                                         ("6 trained on", trained_on[:6], False)):
            errors = moved_errors(bundle, samples, flipped)
            print(f"| {bundle} | {slices} | {'flipped' if flipped else 'as is'} | "
                  + " | ".join(f"{errors[name]:.4f}" for name in MOVES)
                  + f" | {errors['wrong pixels at an edge']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
