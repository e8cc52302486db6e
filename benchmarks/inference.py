"""CPU inference benchmark: PyTorch eager / optimized, ONNX Runtime fp32 / int8, speed and accuracy in one table.

    python benchmarks/inference.py [BUNDLE.msb] [--seconds 3]

Without a bundle it trains a small U-Net on examples/membrane for about a minute (crop-trained at 256,
so 512x512 images run whole). Accuracy is measured on the bundle's recorded validation split.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import masksmith
from masksmith.bundle import read_meta
from masksmith.data.dataset import preprocess_image
from masksmith.data.masks import read_image
from masksmith.export import export_onnx
from masksmith.predict import Predictor, physical_cores

MEMBRANE = Path(__file__).resolve().parents[1] / "examples" / "membrane"


def train_demo_model(out: Path) -> Path:
    """A small crop-trained U-Net on the membrane slices (~1 minute on 2 cores)."""
    run = masksmith.train(MEMBRANE, foreground=0, size=256, resize="random_crop", batch_size=4, epochs=6,
                          lr=3e-3, model_options={"base_channels": 16, "depth": 4}, augment="light",
                          early_stopping=0, out=str(out), quiet=True)
    return Path(run.bundle)


def time_backend(predictor: Predictor, batch: torch.Tensor, seconds: float) -> tuple[float, float, float]:
    """(images/s, median ms, p95 ms) of the backend on one normalized batch."""
    for _ in range(2):  # warm-up: allocator, kernel selection, ORT's first-run graph work
        predictor.backend(batch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        started = time.perf_counter()
        predictor.backend(batch)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    p95 = float(np.percentile(times, 95))
    return batch.shape[0] / median, 1000 * median, 1000 * p95


def main() -> None:
    """Run every variant and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="masksmith-bench-"))
    bundle = args.bundle or train_demo_model(work / "run")
    meta = read_meta(bundle)
    val = sorted(set(meta.split.get("val", []))) or ["0"]
    train = sorted(set(meta.split.get("train", [])))
    calibration = [MEMBRANE / "images" / f"{name}.png" for name in (train or val)[:16]]
    export_onnx(bundle, work / "model.onnx")
    export_onnx(bundle, work / "model.int8.onnx", int8=True, calibration=calibration)
    variants = {
        "PyTorch eager": lambda: Predictor.load(bundle, device="cpu", optimize=False),
        "PyTorch optimized": lambda: Predictor.load(bundle, device="cpu"),
        "ONNX Runtime fp32": lambda: Predictor.load(work / "model.onnx"),
        "ONNX Runtime int8": lambda: Predictor.load(work / "model.int8.onnx"),
    }
    image = read_image(MEMBRANE / "images" / f"{val[0]}.png", channels=meta.in_channels)
    cells = [(256, 1), (256, 8), (512, 1), (512, 8)]
    print(f"model {meta.model} {meta.model_options}, {physical_cores()} physical cores, "
          f"torch {torch.__version__}, validation images: {len(val)}")
    header = "| variant | " + " | ".join(f"{s}² b{b} img/s (med/p95 ms)" for s, b in cells) + " | mIoU | Dice |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, make in variants.items():
        eager_threads = torch.get_num_threads()
        predictor = make()
        row = []
        for side, batch_size in cells:
            crop = image[:side, :side] if image.shape[0] >= side else image
            batch = preprocess_image(crop, (side, side), meta.mean, meta.std).repeat(batch_size, 1, 1, 1)
            rate, median, p95 = time_backend(predictor, batch, args.seconds)
            row.append(f"{rate:.1f} ({median:.0f}/{p95:.0f})")
        scores = masksmith.evaluate(predictor, MEMBRANE, split="val", out=work / "eval" / name.replace(" ", "_"),
                                    progress=False)
        print(f"| {name} | " + " | ".join(row) + f" | {scores['miou']:.4f} | {scores['mean_dice']:.4f} |",
              flush=True)
        torch.set_num_threads(eager_threads)


if __name__ == "__main__":
    main()
