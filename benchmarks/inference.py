"""CPU inference benchmark: PyTorch eager / optimized, ONNX Runtime fp32 / int8, speed and accuracy in one table.

    python benchmarks/inference.py [BUNDLE.msb --data DATA] [--seconds 3] [--threads N]

Without a bundle it trains a small U-Net on examples/membrane for about a minute (crop-trained at 256,
so 512x512 images run whole). Accuracy is measured on the bundle's recorded validation split of DATA
(default examples/membrane); int8 is calibrated on 16 of its other images. The variants are timed
interleaved, one call each in turn, so load from other processes slows all of them alike. Prints one
table: images/s, median and p95 latency and the speed-up over PyTorch eager per size and batch, and
the mIoU and mean Dice of each variant on the validation images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import masksmith
from masksmith.backends import OnnxBackend, physical_cores
from masksmith.bundle import read_meta
from masksmith.data.dataset import preprocess_image
from masksmith.data.images import read_image
from masksmith.onnx_export import export_onnx
from masksmith.predict import Predictor

MEMBRANE = Path(__file__).resolve().parents[1] / "examples" / "membrane"


def train_demo_model(out: Path) -> Path:
    """A small crop-trained U-Net on the membrane slices (~1 minute on 2 cores)."""
    run = masksmith.train(MEMBRANE, foreground=0, size=256, resize="random_crop", batch_size=4, epochs=6,
                          lr=3e-3, model_options={"base_channels": 16, "depth": 4}, augment="light",
                          early_stopping=0, out=str(out), quiet=True)
    return Path(run.bundle)


Backend = Callable[[torch.Tensor], torch.Tensor]


def time_interleaved(backends: dict[str, Backend], batch: torch.Tensor, seconds: float) -> dict[str, list[float]]:
    """Seconds of every call of each backend on one batch, calling them in turn (order reversed every round)."""
    for backend in backends.values():  # warm-up: allocator, kernel selection, ORT's first-run graph work
        backend(batch)
    times: dict[str, list[float]] = {name: [] for name in backends}
    order = list(backends)
    deadline = time.perf_counter() + seconds * len(backends)
    while len(times[order[0]]) < 5 or time.perf_counter() < deadline:
        for name in order:
            started = time.perf_counter()
            backends[name](batch)
            times[name].append(time.perf_counter() - started)
        order.reverse()
    return times


def onnx_predictor(path: Path, threads: int) -> Predictor:
    """A Predictor on an ONNX file with a given onnxruntime thread count."""
    backend = OnnxBackend(path, threads=threads)
    return Predictor(backend, backend.meta, "cpu", multiple=backend.multiple)


def main() -> None:
    """Run every variant and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("--data", type=Path, default=MEMBRANE, help="labelled data the bundle was trained on")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell and variant")
    parser.add_argument("--threads", type=int, default=physical_cores(), help="threads of every backend")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="masksmith-bench-"))
    bundle = args.bundle or train_demo_model(work / "run")
    meta = read_meta(bundle)
    val = sorted(set(meta.split.get("val", []))) or ["0"]
    # Calibrate on images the model is not scored on.
    from masksmith.data.discover import discover

    pool = [sample for samples in discover(args.data).values() for sample in samples]
    calibration = [sample.image for sample in pool if sample.name not in val][:16]
    image = read_image(next(sample.image for sample in pool if sample.name == val[0]), channels=meta.in_channels)
    export_onnx(bundle, work / "model.onnx")
    export_onnx(bundle, work / "model.int8.onnx", int8=True, calibration=calibration)
    predictors = {
        "PyTorch eager": Predictor.load(bundle, device="cpu", optimize=False),
        "PyTorch optimized": Predictor.load(bundle, device="cpu"),
        "ONNX Runtime fp32": onnx_predictor(work / "model.onnx", args.threads),
        "ONNX Runtime int8": onnx_predictor(work / "model.int8.onnx", args.threads),
    }
    torch.set_num_threads(args.threads)  # after loading: the optimized backend sets its own count
    cells = [(256, 1), (256, 8), (512, 1), (512, 8)]
    print(f"model {meta.model} {meta.model_options}, {args.threads} threads, torch {torch.__version__}, "
          f"validation images: {len(val)}")
    timings = {}
    for side, batch_size in cells:
        crop = image[:side, :side] if min(image.shape[:2]) >= side else image
        batch = preprocess_image(crop, (side, side), meta.mean, meta.std).repeat(batch_size, 1, 1, 1)
        backends = {name: predictor.backend for name, predictor in predictors.items()}
        timings[side, batch_size] = time_interleaved(backends, batch, args.seconds)
    print("| variant | size | batch | images/s | median ms | p95 ms | x eager |")
    print("|---|---|---|---|---|---|---|")
    for name in predictors:
        for (side, batch_size), times in timings.items():
            median, eager = statistics.median(times[name]), statistics.median(times["PyTorch eager"])
            p95 = float(np.percentile(times[name], 95))
            print(f"| {name} | {side}² | {batch_size} | {batch_size / median:.1f} | {1000 * median:.0f} | "
                  f"{1000 * p95:.0f} | {eager / median:.2f}x |")
    print(f"\n| variant | mIoU | mean Dice |  (validation split, {len(val)} images at their own size)")
    print("|---|---|---|")
    for name, predictor in predictors.items():
        scores = masksmith.evaluate(predictor, args.data, split="val", out=work / "eval" / name.replace(" ", "_"),
                                    progress=False)
        print(f"| {name} | {scores['miou']:.4f} | {scores['mean_dice']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
