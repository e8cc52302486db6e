"""CPU inference benchmark: PyTorch eager / optimized, ONNX Runtime fp32 / int8, speed and accuracy in one table.

    python benchmarks/inference.py [BUNDLE.msb] [--seconds 3] [--threads N]

Without a bundle it trains a small U-Net on examples/membrane for about a minute (crop-trained at 256,
so 512x512 images run whole). Accuracy is measured on the bundle's recorded validation split; int8
is calibrated on the other images. The variants are timed interleaved, one call each in turn, and
reported as speed-ups over PyTorch eager: load from other processes then slows all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import masksmith
from masksmith.bundle import read_meta
from masksmith.data.dataset import preprocess_image
from masksmith.data.masks import read_image
from masksmith.export import OnnxBackend, export_onnx
from masksmith.predict import Predictor, physical_cores

MEMBRANE = Path(__file__).resolve().parents[1] / "examples" / "membrane"


def train_demo_model(out: Path) -> Path:
    """A small crop-trained U-Net on the membrane slices (~1 minute on 2 cores)."""
    run = masksmith.train(MEMBRANE, foreground=0, size=256, resize="random_crop", batch_size=4, epochs=6,
                          lr=3e-3, model_options={"base_channels": 16, "depth": 4}, augment="light",
                          early_stopping=0, out=str(out), quiet=True)
    return Path(run.bundle)


Backend = Callable[[torch.Tensor], torch.Tensor]


def time_interleaved(backends: dict[str, Backend], batch: torch.Tensor, seconds: float) -> dict[str, float]:
    """Median seconds per call of each backend on one batch, calling them in turn (order reversed every round)."""
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
    return {name: statistics.median(values) for name, values in times.items()}


def onnx_predictor(path: Path, threads: int) -> Predictor:
    """A Predictor on an ONNX file with a given onnxruntime thread count."""
    backend = OnnxBackend(path, threads=threads)
    return Predictor(backend, backend.meta, "cpu", multiple=backend.multiple)


def main() -> None:
    """Run every variant and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell and variant")
    parser.add_argument("--threads", type=int, default=physical_cores(), help="threads of every backend")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="masksmith-bench-"))
    bundle = args.bundle or train_demo_model(work / "run")
    meta = read_meta(bundle)
    val = sorted(set(meta.split.get("val", []))) or ["0"]
    # Calibrate on images the model is not scored on.
    calibration = [path for path in sorted((MEMBRANE / "images").glob("*.png")) if path.stem not in val][:16]
    export_onnx(bundle, work / "model.onnx")
    export_onnx(bundle, work / "model.int8.onnx", int8=True, calibration=calibration)
    predictors = {
        "PyTorch eager": Predictor.load(bundle, device="cpu", optimize=False),
        "PyTorch optimized": Predictor.load(bundle, device="cpu"),
        "ONNX Runtime fp32": onnx_predictor(work / "model.onnx", args.threads),
        "ONNX Runtime int8": onnx_predictor(work / "model.int8.onnx", args.threads),
    }
    torch.set_num_threads(args.threads)  # after loading: the optimized backend sets its own count
    image = read_image(MEMBRANE / "images" / f"{val[0]}.png", channels=meta.in_channels)
    cells = [(256, 1), (256, 8), (512, 1), (512, 8)]
    print(f"model {meta.model} {meta.model_options}, {args.threads} threads, torch {torch.__version__}, "
          f"validation images: {len(val)}")
    medians = {}
    for side, batch_size in cells:
        crop = image[:side, :side] if image.shape[0] >= side else image
        batch = preprocess_image(crop, (side, side), meta.mean, meta.std).repeat(batch_size, 1, 1, 1)
        backends = {name: predictor.backend for name, predictor in predictors.items()}
        medians[side, batch_size] = time_interleaved(backends, batch, args.seconds)
    header = "| variant | " + " | ".join(f"{s}² b{b} x eager (ms)" for s, b in cells) + " | mIoU | Dice |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, predictor in predictors.items():
        row = [f"{cell['PyTorch eager'] / cell[name]:.2f}x ({1000 * cell[name]:.0f})" for cell in medians.values()]
        scores = masksmith.evaluate(predictor, MEMBRANE, split="val", out=work / "eval" / name.replace(" ", "_"),
                                    progress=False)
        print(f"| {name} | " + " | ".join(row) + f" | {scores['miou']:.4f} | {scores['mean_dice']:.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
