"""Resize and normalize, shared by training and inference: nearest-neighbour masks sampled at pixel centres,
normalized tensors."""

from __future__ import annotations

import numpy as np
import torch

from masksmith.data.transforms import preprocess_image, resize_mask


def test_resize_mask_is_nearest_and_centre_aligned():
    mask = np.repeat(np.repeat(np.array([[0, 1], [2, 0]], np.uint8), 50, axis=0), 50, axis=1)  # 100x100 quadrants
    small = resize_mask(mask, (10, 10))
    np.testing.assert_array_equal(small, np.repeat(np.repeat([[0, 1], [2, 0]], 5, axis=0), 5, axis=1))
    odd = resize_mask(mask, (33, 17))
    assert odd.shape == (33, 17)
    assert set(np.unique(odd).tolist()) <= {0, 1, 2}


def test_resize_mask_samples_pixel_centres():
    # Shrinking 12 -> 3 takes the centre of each 4-pixel block, as bilinear image resizing does;
    # cv2.INTER_NEAREST would take the block's first pixel and shift the mask against the image.
    row = np.arange(12, dtype=np.uint8)[None, :].repeat(2, axis=0)
    assert resize_mask(row, (2, 3))[0].tolist() == [2, 6, 10]


def test_preprocess_image_without_size_and_one_channel():
    image = np.full((5, 7, 1), 255, np.uint8)
    out = preprocess_image(image, None, [0.5], [0.25])
    assert out.shape == (1, 1, 5, 7)
    assert torch.allclose(out, torch.full_like(out, 2.0))
    assert preprocess_image(image, 4, [0.5], [0.25]).shape == (1, 1, 4, 4)
