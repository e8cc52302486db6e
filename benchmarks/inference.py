"""CPU inference benchmark: PyTorch eager / optimized, ONNX Runtime fp32 / int8, speed and accuracy in one table.

    python benchmarks/inference.py [BUNDLE.msb ... --data DATA] [--seconds 3] [--threads N] [--cells 384x256x8]
    python benchmarks/inference.py --models unet unet:efficientnet_lite0 fcn-lite [--out runs/bench/inference]

Without a bundle it trains small models on examples/membrane (crop-trained at 256, so 512x512 images
run whole): `--models` names them (registry names, or unet:ENCODER for the U-Net over a pretrained
encoder, started from its ImageNet weights when the weights package is installed and frozen for the
first epoch), default the classic U-Net alone (about a minute on 2 cores). Trained bundles are kept
in --out/NAME/run and reused by the next run. Accuracy is measured on each bundle's recorded
validation split of DATA (default examples/membrane); int8 is calibrated on 16 of its other images,
exported by masksmith's own export step. All models and variants are timed interleaved, one call each in
turn (order reversed every round), so load from other processes slows all of them alike. Prints a
speed table (images/s, median and p95 latency, speed-up over the same model's PyTorch eager) per size
and batch, and an accuracy table: each variant's mIoU and mean Dice against the labels, and for int8
its agreement with fp32 (share of pixels with the same class, and the mIoU of int8's masks scored
against fp32's) on the validation images, at their own size or, for a model trained on resized images, at
its input size (as `predict` runs it). A cell is SIDExBATCH (a square input) or HEIGHTxWIDTHxBATCH (--size's order).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

import masksmith
from masksmith.backends import OnnxBackend, physical_cores
from masksmith.bundle import BundleMeta, read_meta
from masksmith.data.dataset import preprocess_image
from masksmith.data.images import read_image
from masksmith.errors import ConfigError
from masksmith.models.heads import logits_to_classes
from masksmith.onnx_export import export_onnx
from masksmith.predict import Predictor
from masksmith.train_options import parse_size

REPO = Path(__file__).resolve().parents[1]
MEMBRANE = REPO / "examples" / "membrane"


def train_demo_model(name: str, out: Path) -> Path:
    """A small crop-trained model on the membrane slices: the classic U-Net at 16 base channels (~1 minute on
    2 cores), fcn-lite, or `unet:ENCODER` from ImageNet weights (when installed), frozen for the first epoch."""
    model, _, encoder = name.partition(":")
    options: dict = dict(model=model, epochs=6, lr=3e-3)
    if model == "unet" and not encoder:
        options["model_options"] = {"base_channels": 16, "depth": 4}
    if encoder:
        from masksmith.errors import MasksmithError
        from masksmith.models.encoders import pretrained_weights_file

        try:
            pretrained_weights_file(encoder, "imagenet")
            weights: str | None = "imagenet"
        except MasksmithError:
            weights = None  # e.g. MobileNetV2's checkpoint is no installable package here: random start
        options.update(encoder=encoder, weights=weights, freeze_encoder_epochs=1 if weights else 0, epochs=4)
    run = masksmith.train(MEMBRANE, foreground=0, size=256, resize="random_crop", batch_size=4, augment="light",
                          early_stopping=0, out=str(out), quiet=True, seed=0, **options)
    return Path(run.bundle)


Backend = Callable[[torch.Tensor], torch.Tensor]


def time_interleaved(calls: dict, seconds: float, least: int = 3) -> dict:
    """Seconds of every call of each zero-argument function, calling them in turn (order reversed every round)."""
    for call in calls.values():  # warm-up: allocator, kernel selection, ORT's first-run graph work
        call()
    times: dict = {name: [] for name in calls}
    order = list(calls)
    deadline = time.perf_counter() + seconds * len(calls)
    while len(times[order[0]]) < least or time.perf_counter() < deadline:
        for name in order:
            started = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - started)
        order.reverse()
    return times


def onnx_predictor(path: Path, threads: int) -> Predictor:
    """A Predictor on an ONNX file with a given onnxruntime thread count."""
    backend = OnnxBackend(path, threads=threads)
    return Predictor(backend, backend.meta, "cpu", multiple=backend.multiple)


def label(meta: BundleMeta) -> str:
    """A short model name: 'unet', 'unet:efficientnet_lite0', 'unet:efficientnet_lite2:s4' (decoder to stride 4),
    'fcn-lite'."""
    encoder, stride = meta.model_options.get("encoder"), meta.model_options.get("decoder_stride", 1)
    return meta.model + (f":{encoder}" if encoder else "") + (f":s{stride}" if stride != 1 else "")


def agreement(fp32: Backend, int8: Backend, batches: list[torch.Tensor], classes: int) -> tuple[float, float]:
    """Share of pixels where int8 and fp32 pick the same class, and the mIoU of int8's masks against fp32's
    (classes fp32 predicts anywhere)."""
    same = total = 0
    intersection, union = np.zeros(classes), np.zeros(classes)
    for batch in batches:
        reference, got = logits_to_classes(fp32(batch)).numpy(), logits_to_classes(int8(batch)).numpy()
        same += int((reference == got).sum())
        total += reference.size
        for index in range(classes):
            a, b = reference == index, got == index
            intersection[index] += np.logical_and(a, b).sum()
            union[index] += np.logical_or(a, b).sum()
    present = [i for i in range(classes) if (union[i] > 0)]
    return same / total, float(np.mean([intersection[i] / union[i] for i in present]))


def prepare(bundle: Path, data: Path, work: Path, threads: int, optimized: bool) -> tuple[BundleMeta, dict, list]:
    """One bundle's variants (Predictors, exported by masksmith's export step) and its validation batches."""
    from masksmith.data.discover import discover

    meta = read_meta(bundle)
    val = sorted(set(meta.split.get("val", []))) or ["0"]
    pool = [sample for samples in discover(data).values() for sample in samples]
    calibration = [sample.image for sample in pool if sample.name not in val][:16]  # never scored on
    scored = [sample.image for sample in pool if sample.name in val]
    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    export_onnx(bundle, fp32)
    report = export_onnx(bundle, int8, int8=True, calibration=calibration)
    print(f"{label(meta)}: {report.summary()}", flush=True)
    predictors = {"PyTorch eager": Predictor.load(bundle, device="cpu", optimize=False)}
    size = predictors["PyTorch eager"].input_size  # the agreement batches are the images predict would run
    batches = [preprocess_image(read_image(path, channels=meta.in_channels), size, meta.mean, meta.std)
               for path in scored]
    if optimized:
        predictors["PyTorch optimized"] = Predictor.load(bundle, device="cpu")
    predictors["ONNX Runtime fp32"] = onnx_predictor(fp32, threads)
    predictors["ONNX Runtime int8"] = onnx_predictor(int8, threads)
    return meta, predictors, batches


def parse_cell(cell: str) -> tuple[int, int, int]:
    """'256x8' -> (256, 256, 8); '384x256x8' -> (384, 256, 8): height, width, batch (the size as --size reads it)."""
    size, _, batch = cell.rpartition("x")
    try:
        if not batch.isdigit():
            raise ConfigError(f"--cells {cell!r}: expected SIDExBATCH or HEIGHTxWIDTHxBATCH such as 384x256x8")
        parsed = parse_size(size, flag=f"--cells {cell!r}:")
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    height, width = (parsed, parsed) if isinstance(parsed, int) else parsed
    return height, width, int(batch)


def main() -> None:
    """Run every variant of every model and print the two tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path)
    parser.add_argument("--models", nargs="+", default=["unet"], help="models to train when no bundle is given")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "inference",
                        help="where trained bundles are kept (and reused)")
    parser.add_argument("--data", type=Path, default=MEMBRANE, help="labelled data the bundles were trained on")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell and variant")
    parser.add_argument("--threads", type=int, default=physical_cores(), help="threads of every backend")
    parser.add_argument("--cells", nargs="+", default=["256x1", "256x8", "512x1", "512x8"],
                        help="SIDExBATCH or HEIGHTxWIDTHxBATCH")
    parser.add_argument("--optimized", action="store_true", help="also time PyTorch optimized (BN folded, NHWC)")
    args = parser.parse_args()
    cells = [parse_cell(cell) for cell in args.cells]  # before minutes of training and export
    bundles = args.bundles
    if not bundles:
        bundles = []
        for name in args.models:
            folder = args.out / name.replace(":", "-")
            bundle = folder / "run" / "model.msb"
            bundles.append(bundle if bundle.exists() else train_demo_model(name, folder / "run"))
    models = {}
    for bundle in bundles:
        work = bundle.parent / "onnx"
        work.mkdir(exist_ok=True)
        meta, predictors, batches = prepare(bundle, args.data, work, args.threads, args.optimized)
        models[label(meta)] = (meta, predictors, batches)
    torch.set_num_threads(args.threads)  # after loading: the optimized backend sets its own count
    print(f"{args.threads} threads, torch {torch.__version__}")
    timings = {}
    for height, width, batch_size in cells:
        # One input per model (its own channel count); every (model, variant) call is timed in one interleaved loop.
        inputs = {name: torch.randn(batch_size, meta.in_channels, height, width)
                  for name, (meta, _, _) in models.items()}
        calls = {(name, variant): partial(predictor.backend, inputs[name])
                 for name, (_, predictors, _) in models.items() for variant, predictor in predictors.items()}
        timings[height, width, batch_size] = time_interleaved(calls, args.seconds)
    print("| model | variant | size | batch | images/s | median ms | p95 ms | x eager |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (_, predictors, _) in models.items():
        for variant in predictors:
            for (height, width, batch_size), times in timings.items():
                median = statistics.median(times[name, variant])
                eager = statistics.median(times[name, "PyTorch eager"])
                p95 = float(np.percentile(times[name, variant], 95))
                size = f"{height}²" if height == width else f"{height}×{width}"
                print(f"| {name} | {variant} | {size} | {batch_size} | {batch_size / median:.1f} | "
                      f"{1000 * median:.0f} | {1000 * p95:.0f} | {eager / median:.2f}x |")
    print("\n| model | variant | mIoU | mean Dice | int8 = fp32 pixels | int8 mIoU vs fp32 |  (validation split, "
          "scored as evaluate scores them)")
    print("|---|---|---|---|---|---|")
    for name, (meta, predictors, batches) in models.items():
        pixels, miou = agreement(predictors["ONNX Runtime fp32"].backend, predictors["ONNX Runtime int8"].backend,
                                 batches, meta.num_classes)
        for variant, predictor in predictors.items():
            scores = masksmith.evaluate(predictor, args.data, split="val", progress=False,
                                        out=args.out / "eval" / name.replace(":", "-") / variant.replace(" ", "_"))
            extra = f"{100 * pixels:.2f}% | {miou:.4f}" if variant.endswith("int8") else "|"
            print(f"| {name} | {variant} | {scores['miou']:.4f} | {scores['mean_dice']:.4f} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
