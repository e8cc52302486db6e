"""Small models trained once per test process and shared by the test modules that need real predictions."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import masksmith
from tests.helpers import make_shapes_dataset


@functools.cache
def shapes_model() -> tuple[Path, Path]:
    """(bundle, data): a tiny U-Net trained to confidence on the red/blue boxes data (about 9 s on one thread)."""
    root = Path(tempfile.mkdtemp(prefix="masksmith-shapes-model-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = make_shapes_dataset(root / "shapes", count=40)
    run = masksmith.train(data, classes=str(data / "classes.txt"), size=32, epochs=5, batch_size=4, auto=False,
                          model_options={"base_channels": 8, "depth": 2}, augment="none", loss="ce", lr=0.02,
                          seed=0, out=str(root / "run"), quiet=True)
    return Path(run.bundle), data
