"""Small synthetic datasets and models built by the tests themselves, and a recorder of the weights a training
step leaves."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

import masksmith
from masksmith.bundle import BundleMeta, save_bundle
from masksmith.models import build_model

BATCHNORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def make_shapes_dataset(root: Path, count: int = 12, size: tuple[int, int] = (40, 56), seed: int = 0) -> Path:
    """Images with a red rectangle (class 1) and a blue one (class 2) on gray noise; learnable in seconds."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    height, width = size
    for index in range(count):
        image = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
        mask = np.zeros(size, dtype=np.uint8)
        for cls, color in ((1, (220, 40, 40)), (2, (40, 40, 220))):
            h, w = rng.integers(8, 18, 2)
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            image[y:y + h, x:x + w] = color
            mask[y:y + h, x:x + w] = cls
        Image.fromarray(image).save(root / "images" / f"s{index:02d}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"s{index:02d}.png")
    (root / "classes.txt").write_text("background\nred box\nblue box\n")
    return root


def make_void_dataset(root: Path, void: int = 3, count: int = 12) -> Path:
    """The shapes dataset (3 named classes) with a 1-pixel void outline of value `void` around every box, as VOC has.

    With void = 3 the ignore value sits just above the class indices 0..2: the common "void as the last index".
    """
    make_shapes_dataset(root, count=count)
    for path in sorted((root / "masks").glob("*.png")):
        mask = np.asarray(Image.open(path)).copy()
        inside = mask > 0
        grown = inside.copy()
        grown[1:] |= inside[:-1]
        grown[:-1] |= inside[1:]
        grown[:, 1:] |= inside[:, :-1]
        grown[:, :-1] |= inside[:, 1:]
        mask[grown & ~inside] = void
        Image.fromarray(mask).save(path)
    return root


STREET_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist", "Unlabelled")
STREET_VOID = 11


def make_street_dataset(root: Path, count: int = 12, size: tuple[int, int] = (48, 64), seed: int = 0,
                        classes: tuple[str, ...] = STREET_CLASSES) -> Path:
    """A street scene laid out as CamVid ships: sky over buildings, a road with a car, a pavement; a 12-line
    classes.txt whose last name is the void 'Unlabelled', and masks marking with that void index 11 the pixels
    where the class changes from one row to the next, and one small patch."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    height, width = size
    colors = {0: (110, 160, 230), 1: (120, 110, 100), 3: (60, 60, 65), 4: (170, 170, 160), 5: (40, 130, 40),
              8: (200, 30, 30)}
    for index in range(count):
        mask = np.zeros(size, np.uint8)
        horizon, curb = int(rng.integers(14, 22)), int(rng.integers(32, 38))
        mask[horizon:curb] = 1
        mask[curb:] = 3
        mask[curb:curb + 4, : width // 3] = 4
        tree = int(rng.integers(0, width - 12))
        mask[horizon - 6:horizon + 4, tree:tree + 10] = 5
        car = int(rng.integers(0, width - 16))
        mask[curb + 3:curb + 10, car:car + 16] = 8
        edges = np.zeros(size, bool)
        edges[1:] |= mask[1:] != mask[:-1]
        mask[edges] = STREET_VOID  # the annotators left the boundaries unlabelled, as CamVid's do
        y, x = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 4))
        mask[y:y + 4, x:x + 4] = STREET_VOID
        image = np.zeros((height, width, 3), np.uint8)
        for cls, color in colors.items():
            image[mask == cls] = color
        image[mask == STREET_VOID] = (90, 90, 90)
        image = np.clip(image.astype(int) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"street{index:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"street{index:02d}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


class RecordWeights(Callback):
    """The network's state (weights and BatchNorm statistics) after every optimizer step."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append({k: v.detach().clone() for k, v in module.network.state_dict().items()})


def moving_average(start: dict[str, torch.Tensor], steps: list[dict[str, torch.Tensor]],
                   decay: float) -> dict[str, torch.Tensor]:
    """The exponential moving average of the parameters (BatchNorm statistics left out) from `start` over `steps`."""
    average = {k: v for k, v in start.items() if k.rsplit(".", 1)[-1] not in BATCHNORM_STATISTICS}
    for step in steps:
        average = {k: decay * v + (1 - decay) * step[k] for k, v in average.items()}
    return average


def write_photos(folder: Path, names: list[str], size: tuple[int, int] = (24, 32)) -> list[Path]:
    """Random RGB images named `names` in `folder` (the format from each name's suffix)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        path = folder / name
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def untrained_bundle(path: Path, class_names: Sequence[str] = ("bg", "a", "b")) -> Path:
    """An untrained 3-class U-Net bundle: enough to run predict end to end in a second."""
    torch.manual_seed(0)
    network = build_model("unet", 3, 3, depth=2, base_channels=4)
    meta = BundleMeta(model="unet", model_options={"depth": 2, "base_channels": 4}, in_channels=3, out_channels=3,
                      class_names=list(class_names), colors=[[0, 0, 0], [255, 0, 0], [0, 0, 255]], size=32,
                      resize="random_crop", mean=[0.5] * 3, std=[0.25] * 3, mask_encoding={"kind": "index"})
    return save_bundle(path, network.state_dict(), meta)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def real_zero_png(width: int, height: int) -> bytes:
    """A complete, decodable all-zero grayscale PNG, compressed row by row (never width x height in memory)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then the row's pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def tiny_trained_bundle(root: Path) -> Path:
    """A tiny 3-class U-Net bundle trained for one epoch on the synthetic shapes (in `root`)."""
    data = make_shapes_dataset(root / "shapes", count=6)
    return masksmith.train(data, out=str(root / "run"), size=16, epochs=1, batch_size=2,
                           model_options={"base_channels": 4, "depth": 2}, early_stopping=0, quiet=True, auto=False,
                           num_workers=0).bundle


def read_png(path: Path) -> np.ndarray:
    """The pixel values of an image file (a converted mask: its class or instance indices)."""
    with Image.open(path) as image:
        return np.array(image)


def write_image(path: Path, height: int = 40, width: int = 50) -> Path:
    """A one-colour RGB PNG/JPEG of the given size at `path` (folders made), for converter tests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 150)).save(path)
    return path


def dense_rectangle(x0: float, y0: float, x1: float, y1: float, count: int = 1_000_000) -> np.ndarray:
    """[count, 2] points walking the outline of a box, count / 4 to a side: a huge polygon of known area."""
    steps = np.linspace(0, 1, count // 4, endpoint=False)
    return np.vstack([np.c_[x0 + (x1 - x0) * steps, np.full_like(steps, y0)],
                      np.c_[np.full_like(steps, x1), y0 + (y1 - y0) * steps],
                      np.c_[x1 - (x1 - x0) * steps, np.full_like(steps, y1)],
                      np.c_[np.full_like(steps, x0), y1 - (y1 - y0) * steps]])
