"""Repeat-factor sampling: training images that hold rare classes are drawn more often.

The rule is LVIS's (Gupta et al., 2019; detectron2's RepeatFactorTrainingSampler): with f_c the share of
training images that hold class c and a threshold t, class c's repeat factor is max(1, sqrt(t / f_c)) and an
image's is the largest of its classes'. Classes in at least a share t of the images are not repeated; a class
in a hundredth of them, with t = 0.1, is seen about three times as often. mIoU weighs every class alike,
however few images show it; per-pixel class weights make its pixels count more, repeating its images also
shows it in more contexts and augmentations. An epoch keeps its length (images are drawn with replacement,
in proportion to their factors), so a time budget's plan is unchanged. The rule is made for schedules of many
epochs; in a budget of a few epochs it loses (docs/results.md#what-did-not-help), so it is an option, not planned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler
from tqdm.auto import tqdm

from masksmith.data.discover import Sample
from masksmith.data.encoding import MaskEncoding
from masksmith.data.masks import read_mask


def classes_present(samples: Sequence[Sample], encoding: MaskEncoding, num_classes: int, ignore_index: int,
                    progress: bool = True) -> np.ndarray:
    """(images, classes) booleans: which classes each sample's mask holds (decoded as training decodes it)."""
    present = np.zeros((len(samples), num_classes), dtype=bool)
    for row, sample in enumerate(tqdm(samples, desc="classes per image", unit="mask", disable=not progress,
                                      leave=False)):
        if sample.mask is None:
            continue
        values = np.unique(read_mask(sample.mask, encoding, num_classes, ignore_index))
        present[row, values[values < num_classes]] = True
    return present


def repeat_factors(present: np.ndarray, threshold: float) -> np.ndarray:
    """Each image's repeat factor (module doc): the largest max(1, sqrt(threshold / f_c)) of its classes."""
    images = present.shape[0]
    if images == 0:
        return np.ones(0)
    share = present.sum(axis=0) / images  # f_c
    # A class in no image gets a huge factor here, but no image holds it, so none is ever taken.
    by_class = np.maximum(1.0, np.sqrt(threshold / np.maximum(share, 1e-12)))
    return np.where(present, by_class[None, :], 1.0).max(axis=1, initial=1.0)


def repeat_factor_sampler(factors: np.ndarray, seed: int) -> WeightedRandomSampler:
    """Draws an epoch of len(factors) images with replacement, each in proportion to its factor (seeded)."""
    return WeightedRandomSampler(torch.as_tensor(factors, dtype=torch.double), num_samples=len(factors),
                                 replacement=True, generator=torch.Generator().manual_seed(seed))


def describe_factors(factors: np.ndarray, threshold: float) -> str:
    """One line for the run log: how many images are repeated, and how much."""
    repeated = factors > 1
    if not repeated.any():
        return f"repeat-factor sampling (threshold {threshold:g}): no class is rarer than that; every image alike"
    expected = factors / factors.sum() * len(factors)  # draws per epoch
    return (f"repeat-factor sampling (threshold {threshold:g}): {int(repeated.sum())} of {len(factors)} training "
            f"images hold a rarer class and are drawn up to {factors.max():.1f}x as often as the rest "
            f"(per epoch: {expected.max():.2f} draws of the most repeated image, {expected.min():.2f} of the others)")
