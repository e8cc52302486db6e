"""Resize and normalize: the image rules shared by training and inference (no augmentation library here)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from masksmith.data.sizes import as_size
from masksmith.errors import ConfigError, DataError

# Nearest-neighbour that samples pixel centres, like INTER_LINEAR does; plain INTER_NEAREST samples
# top-left corners and shifts the mask against the image by up to (scale - 1) / 2 pixels when shrinking.
MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT
IMAGE_INTERPOLATION = cv2.INTER_LINEAR

def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxWxC uint8 image to (height, width) with bilinear interpolation."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    out = cv2.resize(image, (width, height), interpolation=IMAGE_INTERPOLATION)
    return out[:, :, None] if out.ndim == 2 else out  # cv2 drops a single channel axis


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW class-index mask to (height, width) with nearest-neighbour only (no blended classes)."""
    height, width = size
    if mask.shape[:2] == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=MASK_INTERPOLATION)


def check_norm(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std as float32 arrays, one value per channel, std non-zero."""
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"mean and std need {channels} value(s) each (one per channel), got {list(mean)} and {list(std)}"
        )
    std_arr = np.asarray(std, dtype=np.float32)
    if np.any(std_arr <= 0):
        raise ConfigError(f"std values must be positive, got {list(std)}")
    return np.asarray(mean, dtype=np.float32), std_arr


def normalize_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """HxWxC uint8 → CxHxW float32 tensor, (x/255 - mean) / std per channel."""
    if image.ndim != 3:
        raise DataError(f"image must be HxWxC, got shape {image.shape}")
    mean_arr, std_arr = check_norm(mean, std, image.shape[2])
    scaled = (image.astype(np.float32) / 255.0 - mean_arr) / std_arr
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def preprocess_image(
    image: np.ndarray, size: tuple[int, int] | None, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """HxWxC uint8 → 1xCxHxW float tensor, bilinear-resized to `size` (height, width) if given, normalized."""
    if size is not None:
        image = resize_image(image, as_size(size))
    return normalize_image(image, mean, std).unsqueeze(0)
