"""Throughput of the built-in models, and masksmith's pipeline overhead against a plain PyTorch loop.

    python benchmarks/speed.py [--sizes 256 512] [--steps 6] [--models unet unet:efficientnet_lite0 fcn-lite]

A model is a registry name, or `unet:ENCODER` for the U-Net over one of masksmith's pretrained encoders
(efficientnet_lite0/1/2, mobilenet_v2; timed from random weights, which cost the same).

For each model and input size it prints one row: parameters, GFLOPs per image (forward), training
images/s through masksmith's own pipeline (files → dataset → augmentation → Lightning step) and through
a plain PyTorch loop over the same model and images already in memory (the tutorials' way), the share of
step time that masksmith's data loading, augmentation and logging cost, inference images/s at batch 1
and 8, peak memory (resident set of a fresh process per row), and the GFLOP/s the plain training loop
achieves (3x the forward FLOPs per image) as a fraction of this machine's ceiling (a large fp32 matrix
product, measured in the same run through both the BLAS and oneDNN).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "membrane"


def matmul_ceiling_gflops(repeats: int = 5) -> dict[str, float]:
    """Best fp32 GFLOP/s of large matrix products, through the BLAS (torch.matmul, 2048 x 2048) and through
    oneDNN, the library PyTorch's convolutions use (1x1 convolutions: 1024 x 1024 weights over 64 x 64 and
    2048 x 2048 weights over 32 x 64 pixels). The highest is this machine's practical ceiling: on AMD CPUs
    MKL's matmul reaches well under half of what oneDNN does."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    products = {"matmul 2048": (lambda: a @ b, 2 * 2048**3)}
    for channels, height, width in ((1024, 64, 64), (2048, 32, 64)):
        image, kernel = torch.randn(1, channels, height, width), torch.randn(channels, channels, 1, 1)
        products[f"1x1 conv {channels}"] = (lambda image=image, kernel=kernel: torch.nn.functional.conv2d(image, kernel),
                                            2 * channels * channels * height * width)
    gflops = {}
    with torch.inference_mode():
        for name, (product, flops) in products.items():
            product()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                product()
                best = min(best, time.perf_counter() - start)
            gflops[name] = flops / best / 1e9
    return gflops


def forward_gflops(model: torch.nn.Module, size: int, channels: int = 1) -> float:
    """Forward FLOPs of one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, channels, size, size))
    return counter.get_total_flops() / 1e9


def images_per_second(step, images_per_step: int, steps: int) -> float:
    """Run step() once to warm up, then `steps` times; images per second of the timed steps."""
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return images_per_step * steps / (time.perf_counter() - start)


def plain_training(model: torch.nn.Module, size: int, batch: int, steps: int) -> float:
    """The tutorials' loop: tensors in memory, Adam, cross-entropy, no data pipeline at all."""
    from masksmith.data.dataset import preprocess_image
    from masksmith.data.encoding import MaskEncoding
    from masksmith.data.images import read_image
    from masksmith.data.masks import read_mask

    images = torch.cat([preprocess_image(read_image(p, 1), (size, size), [0.5], [0.25])
                        for p in sorted((DATA / "images").glob("*.png"))[:batch]])
    masks = torch.stack([torch.from_numpy(read_mask(p, MaskEncoding("binary", 0), 2).astype(np.int64))
                         for p in sorted((DATA / "masks").glob("*.png"))[:batch]])
    masks = torch.nn.functional.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), masks).backward()
        optimizer.step()

    return images_per_second(step, batch, steps)


class StepTimer:
    """Lightning callback: wall time between the ends of successive training steps.

    Everything between two step ends is counted: loading, decoding and augmenting the next batch,
    the forward and backward passes, the optimizer step and masksmith's logging.
    """

    def __new__(cls):  # a Callback subclass made on demand, so that importing this file needs no Lightning
        from lightning.pytorch.callbacks import Callback

        class _Timer(Callback):
            def __init__(self) -> None:
                self.ends: list[float] = []

            def on_train_batch_end(self, *args, **kwargs) -> None:
                self.ends.append(time.perf_counter())

        return _Timer()


def model_spec(name: str) -> tuple[str, dict]:
    """'unet:efficientnet_lite0' -> ('unet', {'encoder': 'efficientnet_lite0'}); a plain name has no options."""
    model, _, encoder = name.partition(":")
    return model, ({"encoder": encoder} if encoder else {})


def masksmith_training(model_name: str, size: int, batch: int, steps: int) -> float:
    """masksmith's own path: files → dataset with augmentation → Lightning step, timed per step."""
    import masksmith

    with tempfile.TemporaryDirectory() as out:
        timer = StepTimer()
        subset = _subset(Path(out) / "data", (steps + 1) * batch)
        masksmith.train(subset, out=str(Path(out) / "run"), callbacks=[timer], foreground=0, size=size,
                        batch_size=batch, model=model_spec(model_name)[0], **model_spec(model_name)[1], auto=False, quiet=True, epochs=1, early_stopping=0,
                        augment="default", loss="ce")
    # The first step (warm-up: allocation, first batch) is left out, as in the plain loop.
    return (len(timer.ends) - 1) * batch / (timer.ends[-1] - timer.ends[0])


def _subset(folder: Path, count: int) -> Path:
    """Split folders: `count` training pairs (demo images, cycled) and one fixed validation pair."""
    import shutil

    sources = sorted((DATA / "images").glob("*.png"))
    for split, names in (("train", [sources[i % len(sources)].name for i in range(count)]), ("val", ["0.png"])):
        for kind in ("images", "masks"):
            (folder / split / kind).mkdir(parents=True)
            for i, name in enumerate(names):
                shutil.copy(DATA / kind / name, folder / split / kind / f"{i:04d}.png")
    return folder


def inference(model: torch.nn.Module, size: int, batch: int, steps: int) -> float:
    """Forward passes without gradients at the given batch size."""
    model.eval()
    x = torch.randn(batch, 1, size, size)

    def step() -> None:
        with torch.inference_mode():
            model(x)

    return images_per_second(step, batch, steps)


def measure(row: dict, queue: mp.Queue) -> None:
    """One row, in a fresh process so that its peak memory is its own."""
    from masksmith.models import build_model

    torch.manual_seed(0)
    name, size, steps = row["model"], row["size"], row["steps"]
    model_name, options = model_spec(name)
    model = build_model(model_name, 1, 2, **options)
    result = dict(row)
    result["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    result["gflops"] = forward_gflops(model, size)
    result["plain_train"] = plain_training(model, size, 4, steps)
    result["masksmith_train"] = masksmith_training(name, size, 4, steps)
    result["infer_b1"] = inference(model, size, 1, steps)
    result["infer_b8"] = inference(model, size, 8, max(2, steps // 2))
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["unet", "unet:efficientnet_lite0", "unet:mobilenet_v2",
                                                         "fcn-lite"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    products = matmul_ceiling_gflops()
    ceiling = max(products.values())
    print(f"machine ceiling: {ceiling:.1f} GFLOP/s (best fp32 matrix product, {torch.get_num_threads()} threads: "
          + ", ".join(f"{name} {value:.0f}" for name, value in products.items()) + ")")
    header = (f"{'model':<24} {'size':>4} {'params M':>8} {'GFLOPs':>7} {'train img/s':>11} {'plain img/s':>11} "
              f"{'overhead':>8} {'infer b1':>8} {'infer b8':>8} {'peak MB':>8} {'train/ceiling':>13}")
    print(header)
    print("-" * len(header))
    context = mp.get_context("spawn")
    for name in args.models:
        for size in args.sizes:
            queue = context.Queue()
            process = context.Process(target=measure, args=({"model": name, "size": size, "steps": args.steps}, queue))
            process.start()
            r = queue.get()
            process.join()
            overhead = 1 - r["masksmith_train"] / r["plain_train"]
            # Training costs about 3x the forward FLOPs (forward + backward).
            achieved = 3 * r["gflops"] * r["plain_train"]
            print(f"{name:<24} {size:>4} {r['params_m']:>8.2f} {r['gflops']:>7.1f} {r['masksmith_train']:>11.2f} "
                  f"{r['plain_train']:>11.2f} {overhead:>8.1%} {r['infer_b1']:>8.2f} {r['infer_b8']:>8.2f} "
                  f"{r['peak_mb']:>8.0f} {achieved / ceiling:>13.1%}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
