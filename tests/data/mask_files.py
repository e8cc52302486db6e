"""Mask arrays and colors for the tests of data/: every encoding is built from these."""

from __future__ import annotations

import numpy as np

BLACK, RED, GREEN, BLUE, WHITE = (0, 0, 0), (128, 0, 0), (0, 128, 0), (0, 0, 128), (255, 255, 255)


def class_blocks(height: int = 12, width: int = 16, seed: int = 0, k: int = 3) -> np.ndarray:
    """A class-index mask of k classes in 4x4 blocks, every class present."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, k, (height // 4, width // 4)), np.ones((4, 4), int)).astype(np.uint8)
    mask.flat[:k] = np.arange(k)  # make sure every class occurs
    return mask
