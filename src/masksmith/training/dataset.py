"""Torch dataset: read → resize/crop → augment → normalize → tensors (training only: albumentations)."""

from __future__ import annotations

import os

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from masksmith.data.discover import Sample
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MaskEncoding, ignore_index_problem
from masksmith.data.images import read_image
from masksmith.data.masks import read_mask
from masksmith.data.sizes import RESIZE_MODES, ResizeMode, as_size, resizes_whole_image
from masksmith.data.transforms import check_norm, normalize_image, resize_image, resize_mask
from masksmith.data.validate import size_mismatch
from masksmith.errors import ConfigError, DataError
from masksmith.training.augment import seed_augmentation

def _crop_pipeline(mode: str, size: tuple[int, int], ignore_index: int) -> A.Compose | None:
    """Pad (image 0, mask ignore) then crop, so padding never counts as background."""
    if resizes_whole_image(mode):
        return None
    height, width = size
    crop = A.RandomCrop(height, width) if mode == "random_crop" else A.CenterCrop(height, width)
    pad = A.PadIfNeeded(
        min_height=height, min_width=width, position="center",
        border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index,
    )
    return A.Compose([pad, crop])


class SegmentationDataset(Dataset):
    """Image/mask pairs as normalized tensors, resized or cropped to one size, optionally augmented."""

    def __init__(
        self,
        samples: list[Sample],
        *,
        size: int | tuple[int, int],
        resize: ResizeMode = "resize",
        augment: A.Compose | None = None,
        channels: int,
        mean: list[float],
        std: list[float],
        encoding: MaskEncoding,
        num_classes: int,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
    ):
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        # Masks are uint8 and padding is filled with ignore_index, so it must fit and not be a class.
        problem = ignore_index_problem(ignore_index, num_classes)
        if problem is not None:
            raise ConfigError(problem)
        missing = [s.image.name for s in samples if s.mask is None]
        if missing:
            raise DataError(f"training samples need masks; none for {', '.join(missing[:10])}")
        self.samples = list(samples)
        self.size = as_size(size)
        self.resize = resize
        self.augment = augment
        self.channels = channels
        self.mean, self.std = list(mean), list(std)
        check_norm(self.mean, self.std, channels)
        self.encoding = encoding
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        steps = [t for t in (_crop_pipeline(resize, self.size, ignore_index), augment) if t is not None]
        self._pipeline = A.Compose(steps) if steps else None
        self._seeded_for: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def _reseed(self) -> None:
        """Seed the albumentations RNG from torch's, once per process and torch seed.

        albumentations keeps its own RNG: without this, forked DataLoader workers would all replay
        the same augmentations, and torch.manual_seed would not make runs repeatable.
        """
        key = (os.getpid(), torch.initial_seed())
        if self._pipeline is not None and key != self._seeded_for:
            seed_augmentation(self._pipeline, torch.initial_seed())
            self._seeded_for = key

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The i-th (image HxWxC uint8, mask HxW uint8) at file resolution, sizes checked."""
        sample = self.samples[i]
        assert sample.mask is not None
        image = read_image(sample.image, self.channels)
        mask = read_mask(sample.mask, self.encoding, self.num_classes, self.ignore_index)
        # Validation checked this before training; a file replaced since then still fails by name here.
        problem = size_mismatch(sample, (image.shape[1], image.shape[0]), (mask.shape[1], mask.shape[0]))
        if problem is not None:
            raise DataError(problem)
        return image, mask

    def __getitem__(self, i: int) -> dict:
        image, mask = self.read(i)
        if resizes_whole_image(self.resize):
            image, mask = resize_image(image, self.size), resize_mask(mask, self.size)
        if self._pipeline is not None:
            self._reseed()
            out = self._pipeline(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
            if image.ndim == 2:
                image = image[:, :, None]
        return {
            "image": normalize_image(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "index": i,
        }
