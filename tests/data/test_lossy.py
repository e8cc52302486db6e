"""Lossy (JPEG) masks: colors snapped to the class colors, binary thresholds, and what stays an error."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masksmith.data.detect import detect_encoding
from masksmith.data.encoding import MaskEncoding
from masksmith.data.lossy import LossyMaskWarning
from masksmith.data.masks import read_mask
from masksmith.errors import DataError
from tests.conftest import save_array
from tests.data.mask_files import BLACK, RED


def _blocky(height: int = 160, width: int = 240, seed: int = 0, k: int = 4, block: int = 24) -> np.ndarray:
    """Large flat class regions whose edges do not fall on JPEG's 8x8 grid, plus a disc."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, k, (height // block + 1, width // block + 1)), np.ones((block, block), int))
    mask = mask[:height, :width]
    yy, xx = np.mgrid[:height, :width]
    mask[(yy - height // 2) ** 2 + (xx - width // 3) ** 2 < 35**2] = k - 1
    return mask.astype(np.uint8)


def _away_from_edges(mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """Pixels whose whole (2r+1)^2 neighbourhood has their class: where JPEG cannot smear."""
    keep = np.ones(mask.shape, bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            keep &= np.roll(np.roll(mask, dy, 0), dx, 1) == mask
    keep[:radius] = keep[-radius:] = False
    keep[:, :radius] = keep[:, -radius:] = False
    return keep


def _read_with_warning(path: Path, encoding: MaskEncoding, num_classes: int) -> tuple[np.ndarray, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = read_mask(path, encoding, num_classes)
    lossy = [str(w.message) for w in caught if issubclass(w.category, LossyMaskWarning)]
    assert len(lossy) == 1, [str(w.message) for w in caught]
    return decoded, lossy[0]


def test_jpeg_color_masks_snap_to_the_class_colors(tmp_path):
    table = np.array([BLACK, (30, 160, 60), (40, 60, 220), (200, 30, 30)], np.uint8)  # in packed-value order
    truths = [_blocky(seed=s) for s in range(2)]
    paths = [save_array(tmp_path / f"m{i}.jpg", table[t], quality=75) for i, t in enumerate(truths)]
    encoding, num_classes = detect_encoding(paths)
    assert encoding.kind == "color" and encoding.lossy and num_classes == 4
    found = np.asarray(encoding.colors, int)
    assert np.abs(found - table.astype(int)).max() <= 8  # the four flat colors, near their true values
    decoded, message = _read_with_warning(paths[0], encoding, num_classes)
    assert re.fullmatch(re.escape(f"{paths[0]}: lossy JPEG mask, ") + r"\d+ pixels \(\d+\.\d%\) snapped to the "
                        r"nearest class color", message)
    inside = _away_from_edges(truths[0])
    assert (decoded[inside] == truths[0][inside]).mean() >= 0.99
    # With the exact colors from a palette file the same holds.
    exact = MaskEncoding("color", colors=[tuple(c) for c in table.tolist()])
    decoded, _ = _read_with_warning(paths[1], exact, 4)
    inside = _away_from_edges(truths[1])
    assert (decoded[inside] == truths[1][inside]).mean() >= 0.99


def test_jpeg_binary_masks_threshold_at_the_midpoint(tmp_path):
    truth = _blocky(k=2)
    path = save_array(tmp_path / "a.jpg", truth * 255, quality=75)
    encoding, num_classes = detect_encoding([path])
    assert encoding == MaskEncoding("binary", 255, 0, lossy=True) and num_classes == 2
    decoded, message = _read_with_warning(path, encoding, 2)
    assert message.startswith(f"{path}: lossy JPEG mask, ") and "nearest class value" in message
    inside = _away_from_edges(truth)
    assert (decoded[inside] == truth[inside]).mean() >= 0.99
    assert (decoded == truth).mean() >= 0.98
    # Membrane-style: 0 is the foreground; a JPEG still snaps to 0 / 255.
    flipped = save_array(tmp_path / "b.jpg", (1 - truth) * 255, quality=75)
    encoding, _ = detect_encoding([flipped], foreground=0)
    assert encoding == MaskEncoding("binary", 0, 255, lossy=True)
    decoded, _ = _read_with_warning(flipped, encoding, 2)
    assert (decoded[inside] == truth[inside]).mean() >= 0.99


def test_a_jpeg_mask_among_png_masks_is_snapped_by_its_suffix(tmp_path):
    truth = _blocky(k=2)
    png = save_array(tmp_path / "a.png", truth * 255)
    jpg = save_array(tmp_path / "b.jpg", truth * 255, quality=75)
    encoding, _ = detect_encoding([png])
    assert not encoding.lossy
    decoded, message = _read_with_warning(jpg, encoding, 2)
    assert "lossy JPEG mask" in message and (decoded == truth).mean() >= 0.98


def test_png_with_jpeg_artifacts_is_detected_as_lossy(tmp_path):
    table = np.array([BLACK, (30, 160, 60), (200, 30, 30)], np.uint8)  # in packed-value order
    truth = _blocky(k=3)
    save_array(tmp_path / "a.jpg", table[truth], quality=75)
    artifacts = save_array(tmp_path / "a.png", np.asarray(Image.open(tmp_path / "a.jpg")))  # once JPEG, now PNG
    encoding, num_classes = detect_encoding([artifacts])
    assert encoding.lossy and num_classes == 3
    decoded, message = _read_with_warning(artifacts, encoding, 3)
    assert message.startswith(f"{artifacts}: lossy mask, ")
    inside = _away_from_edges(truth)
    assert (decoded[inside] == truth[inside]).mean() >= 0.99


def test_a_lossy_mask_with_a_large_unknown_color_is_still_an_error(tmp_path):
    truth = _blocky(k=2)
    rgb = np.array([BLACK, RED], np.uint8)[truth]
    rgb[:40, :40] = (0, 200, 255)  # a region of a class the table does not know
    path = save_array(tmp_path / "a.jpg", rgb, quality=90)
    with pytest.raises(DataError, match="far from every class color"):
        read_mask(path, MaskEncoding("color", colors=[BLACK, RED]), 2)
