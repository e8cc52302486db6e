"""One limit on image pixels, read from the header before decoding: its default, the environment and a context."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import masksmith
from masksmith.data.images import read_image
from masksmith.data.limits import DEFAULT_MAX_IMAGE_PIXELS, ENV_VAR, ImageTooLarge, image_pixel_limit
from tests.helpers import real_zero_png


def test_a_real_10000_square_png_is_refused_before_decoding(tmp_path):
    # 100 Mpx: above the default limit but below PIL's own error limit, so PIL alone would decode it (GBs).
    path = tmp_path / "big.png"
    path.write_bytes(real_zero_png(10000, 10000))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageTooLarge, match=r"big\.png: image refused.*10000x10000 = 100000000 pixels.*89478485"):
        read_image(path)


def test_the_limit_is_configurable_by_environment_and_context(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    assert read_image(path).shape == (30, 40, 1)
    monkeypatch.setenv(ENV_VAR, "1000")
    with pytest.raises(ImageTooLarge, match=r"40x30 = 1200 pixels, over the limit of 1000"):
        read_image(path)
    with image_pixel_limit(1200):
        assert read_image(path).shape == (30, 40, 1)
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(masksmith.errors.ConfigError, match=ENV_VAR):
        read_image(path)
    monkeypatch.delenv(ENV_VAR)
    with image_pixel_limit(None):
        assert read_image(path).shape == (30, 40, 1)
    assert DEFAULT_MAX_IMAGE_PIXELS == 89_478_485


def test_a_limit_above_pils_own_is_honoured(tmp_path):
    # PIL refuses above 2 x its MAX_IMAGE_PIXELS inside Image.open; masksmith's limit, not PIL's, decides.
    path = tmp_path / "wide.png"
    path.write_bytes(real_zero_png(20000, 10000))  # 200 Mpx > PIL's error limit of 179 Mpx
    with image_pixel_limit(200_000_000):
        with masksmith.data.limits.open_image(path) as image:
            assert image.size == (20000, 10000)
    with pytest.raises(ImageTooLarge, match="20000x10000"):
        with masksmith.data.limits.open_image(path):
            pass
