"""Without the ray extra, `predict --engine ray` is a one-line error naming the install, before any work."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from masksmith.cli.app import app
from tests.trained_models import shapes_model


@pytest.mark.slow
def test_engine_ray_without_ray_names_the_extra(tmp_path, monkeypatch):
    bundle, _ = shapes_model()
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, installed or not
    result = CliRunner().invoke(app, ["predict", str(bundle), str(image), "--out", str(tmp_path / "out"),
                                      "--engine", "ray"])
    assert result.exit_code == 2 and "pip install 'masksmith[ray]'" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
