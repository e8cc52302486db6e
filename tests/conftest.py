"""Shared fixtures: paths to the small real datasets and writers for tiny image/mask files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """ONNX exports made by the commands' default backend go to one cache per test process, never ~/.cache:
    a bundle shared by several tests is exported once (subprocesses inherit the variable)."""
    import os

    os.environ["MASKSMITH_CACHE"] = str(tmp_path_factory.mktemp("masksmith-cache"))


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own temporary folder: default outputs (runs/train, runs/check-...) stay out of the repo."""
    monkeypatch.chdir(tmp_path)


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not present: {path}")
    return path


@pytest.fixture
def isbi_dir() -> Path:
    """ISBI 2012 membrane data: train/{images,masks}/N.png, test/images; masks {0,255}, 0 = membrane."""
    return _shared("isbi2012-membrane")


@pytest.fixture
def ccp_dir() -> Path:
    """Clothing Co-Parsing: images/NNNN.jpg + masks/NNNN.png index masks 0..58, classes.txt."""
    return _shared("clothing-co-parsing")


@pytest.fixture
def labelme_voc_dir() -> Path:
    """Labelme's VOC export: JPEGImages + SegmentationClass palette PNGs, no ImageSets."""
    return _shared("labelme-examples/semantic_segmentation/data_dataset_voc")


def save_array(path: Path, array: np.ndarray, mode: str | None = None, **save_kwargs) -> Path:
    """Write `array` as an image file (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **save_kwargs)
    return path


@pytest.fixture
def write_image_file() -> Callable[..., Path]:
    """write_image_file(path, array, mode=None, **save_kwargs) -> path."""
    return save_array


@pytest.fixture
def make_image_mask_pairs() -> Callable[..., list[str]]:
    """make_image_mask_pairs(image_dir, mask_dir, names, ...) writes random RGB images and index masks."""

    def make(
        image_dir: Path,
        mask_dir: Path,
        names: list[str],
        *,
        size: tuple[int, int] = (12, 16),
        image_ext: str = ".png",
        mask_suffix: str = "",
        num_classes: int = 3,
        seed: int = 0,
    ) -> list[str]:
        rng = np.random.default_rng(seed)
        for name in names:
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            mask = rng.integers(0, num_classes, size, dtype=np.uint8)
            save_array(image_dir / f"{name}{image_ext}", image)
            save_array(mask_dir / f"{name}{mask_suffix}.png", mask)
        return names

    return make


# Tests that skip when a tool is missing, found by their skip reason, and the one command that enables them.
MISSING_TOOLS = {
    "chromium": (("no chromium binary",), "sudo apt-get install -y chromium  (as .ci/run does)"),
    "the smp extra": (("'segmentation_models_pytorch'", "'timm'", "'torchvision'"),
                      "./test-smp.sh  (the smp extra in its own environment, .venv-smp)"),
}


def pytest_terminal_summary(terminalreporter) -> None:
    """Name, in the last lines, the tests a missing tool skipped and the command that enables them."""
    skipped = terminalreporter.stats.get("skipped", [])
    for tool, (reasons, command) in MISSING_TOOLS.items():
        hits = sorted({r.nodeid for r in skipped if any(reason in str(r.longrepr) for reason in reasons)})
        if hits:
            terminalreporter.write_line(f"skipped, {tool} missing: {', '.join(hits)}", yellow=True)
            terminalreporter.write_line(f"  to run them: {command}", yellow=True)
