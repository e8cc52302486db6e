"""The input size and the resize mode: how training fits an image to the network, and what inference does with it.

One owner for the resize modes (`ResizeMode`, `RESIZE_MODES`) and for reading a size as (height, width)
(`as_size`), so the config, the bundle, the datasets and inference spell them once.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import numpy as np

from masksmith.errors import ConfigError

# resize: the whole image to the input size; random_crop / center_crop: crops of it, so the network learns at
# the images' own scale and, fully convolutional, predicts whole images at their own size.
ResizeMode = Literal["resize", "random_crop", "center_crop"]
RESIZE_MODES: tuple[ResizeMode, ...] = get_args(ResizeMode)


def resizes_whole_image(mode: str) -> bool:
    """Whether a model trained with this resize mode sees every image resized to its input size."""
    return mode == "resize"


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a (height, width) pair; ConfigError for anything else."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ConfigError(f"size must be an int or a (height, width) pair of ints, got {size!r}")
    if min(pair) < 1:
        raise ConfigError(f"size must be positive, got {size!r}")
    return pair
