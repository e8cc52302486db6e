"""The dataset the label tests open."""

from __future__ import annotations

import pytest

from tests.helpers import make_shapes_dataset


@pytest.fixture
def shapes(tmp_path):
    """8 shapes images 56x40: 6 with index masks (mode L), s06 and s07 without."""
    data = make_shapes_dataset(tmp_path / "shapes", count=8, size=(40, 56))
    for name in ("s06", "s07"):
        (data / "masks" / f"{name}.png").unlink()
    return data
