"""Throughput of the built-in models, and masksmith's pipeline overhead against a plain PyTorch loop.

    python benchmarks/speed.py [--sizes 256 512] [--rounds 3] [--models unet unet:efficientnet_lite0 fcn-lite]
                               [--pipeline unet fcn-lite] [--pipeline-steps 6]

A model is a registry name, or `unet:ENCODER` for the U-Net over one of masksmith's pretrained encoders
(efficientnet_lite0/1/2, mobilenet_v2; timed from random weights, which cost the same). Run it with
OMP_NUM_THREADS unset (PyTorch then uses one thread per core) or set to the cores it may use.

Table 1, per model and input size: parameters, GFLOPs per image (forward, torch's FlopCounterMode),
training images/s of one optimizer step (Adam, cross-entropy, batch 4, images in memory: the tutorials'
loop), fine-tuning everything and with the encoder frozen (no encoder gradients, BatchNorm statistics
fixed, as `--freeze-encoder-epochs` trains), inference images/s at batch 1 and 8, and the GFLOP/s the
fine-tuning step achieves (3x the forward FLOPs per image) as a fraction of this machine's ceiling (a
large fp32 matrix product, through the BLAS and oneDNN, measured in the same run). The models are timed
interleaved: one call of each model in turn, the order reversed every round, so load from other
processes slows all of them alike; each number is the median call.

Table 2, per `--pipeline` model and size: training images/s through masksmith's own pipeline (files →
dataset → augmentation → Lightning step) against the plain loop over the same model (both in a fresh
process, one after the other), the share of step time masksmith's data loading, augmentation and
logging cost, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
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


def demo_batch(size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` demo images and masks at size x size, preprocessed as training sees them, in memory."""
    from masksmith.data.encoding import MaskEncoding
    from masksmith.data.images import read_image
    from masksmith.data.masks import read_mask
    from masksmith.data.transforms import preprocess_image

    images = torch.cat([preprocess_image(read_image(p, 1), (size, size), [0.5], [0.25])
                        for p in sorted((DATA / "images").glob("*.png"))[:batch]])
    masks = torch.stack([torch.from_numpy(read_mask(p, MaskEncoding("binary", 0), 2).astype(np.int64))
                         for p in sorted((DATA / "masks").glob("*.png"))[:batch]])
    masks = torch.nn.functional.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    return images, masks


def training_step(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, frozen: bool = False,
                  frozen_stages: int = 0):
    """The tutorials' step (Adam, cross-entropy, no data pipeline) as a function; `frozen`: the encoder frozen
    for the step as masksmith's --freeze-encoder-epochs does it (no gradients, BatchNorm statistics fixed);
    `frozen_stages`: only the encoder's first stages frozen, as --frozen-stages keeps them."""
    from masksmith.models.base import encoder_of, set_frozen

    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    encoder = encoder_of(model)
    frozen_layers = [encoder] if frozen else encoder.stage_modules(frozen_stages) if frozen_stages else []

    def step() -> None:
        model.train()
        for layer in frozen_layers:
            set_frozen(layer, True, training=True)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), masks).backward()
        optimizer.step()  # Adam skips the frozen parameters: they have no gradient
        for layer in frozen_layers:
            set_frozen(layer, False, training=True)

    return step


def plain_training(model: torch.nn.Module, size: int, batch: int, steps: int) -> float:
    """Images/s of the tutorials' loop: tensors in memory, Adam, cross-entropy, no data pipeline at all."""
    return images_per_second(training_step(model, *demo_batch(size, batch)), batch, steps)


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


def inference_step(model: torch.nn.Module, size: int, batch: int):
    """A forward pass without gradients at the given batch size, as a function."""
    x = torch.randn(batch, 1, size, size)

    def step() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)

    return step


def time_interleaved(steps: dict[str, object], rounds: int) -> dict[str, float]:
    """Median seconds per call of each step, one call each in turn (order reversed every round), after a warm-up."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for _ in range(rounds):
        for name in order:
            started = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - started)
        order.reverse()
    return {name: statistics.median(values) for name, values in times.items()}


def build(name: str) -> torch.nn.Module:
    """Model `name` ('unet', 'unet:mobilenet_v2', ...) for 1 input channel and 2 classes, random weights."""
    from masksmith.models import build_model

    torch.manual_seed(0)
    model_name, options = model_spec(name)
    return build_model(model_name, 1, 2, **options)


def throughput_rows(names: list[str], size: int, rounds: int, batch: int = 4) -> list[dict]:
    """Table 1's rows at one input size: every model's steps timed interleaved with the others'."""
    from masksmith.models.base import encoder_of

    models = {name: build(name) for name in names}
    images, masks = demo_batch(size, batch)
    rows = {name: {"model": name, "size": size, "params_m": sum(p.numel() for p in m.parameters()) / 1e6,
                   "gflops": forward_gflops(m, size)} for name, m in models.items()}
    kinds = {"train": batch, "frozen": batch, "infer_b1": 1, "infer_b8": 8}
    for kind, per_call in kinds.items():
        steps = {}
        for name, model in models.items():
            if kind == "frozen" and encoder_of(model) is None:
                continue
            steps[name] = (inference_step(model, size, per_call) if kind.startswith("infer")
                           else training_step(model, images, masks, frozen=kind == "frozen"))
        for name, seconds in time_interleaved(steps, rounds).items():
            rows[name][kind] = per_call / seconds
    return list(rows.values())


def pipeline_row(row: dict, queue: mp.Queue) -> None:
    """Table 2's row, in a fresh process so that its peak memory is its own."""
    name, size, steps = row["model"], row["size"], row["steps"]
    result = dict(row)
    result["plain_train"] = plain_training(build(name), size, 4, steps)
    result["masksmith_train"] = masksmith_training(name, size, 4, steps)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def _result(process: mp.Process, queue: mp.Queue) -> dict | None:
    """The row a child process puts on `queue`, or None once it has ended without one (killed, or failed)."""
    import queue as queues

    while True:
        try:
            row = queue.get(timeout=5)
            process.join()
            return row
        except queues.Empty:
            if not process.is_alive():
                return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["unet", "unet:efficientnet_lite0", "unet:efficientnet_lite1",
                                                         "unet:efficientnet_lite2", "unet:mobilenet_v2", "fcn-lite"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per model and measurement (table 1)")
    parser.add_argument("--pipeline", nargs="*", default=["unet", "fcn-lite"], help="models of table 2 (none: skip)")
    parser.add_argument("--pipeline-steps", type=int, default=6, help="timed training steps per row of table 2")
    args = parser.parse_args()
    products = matmul_ceiling_gflops()
    ceiling = max(products.values())
    print(f"machine ceiling: {ceiling:.1f} GFLOP/s (best fp32 matrix product, {torch.get_num_threads()} threads: "
          + ", ".join(f"{name} {value:.0f}" for name, value in products.items()) + ")")
    header = (f"{'model':<24} {'size':>4} {'params M':>8} {'GFLOPs':>7} {'train img/s':>11} {'frozen img/s':>12} "
              f"{'infer b1':>8} {'infer b8':>8} {'train/ceiling':>13}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for r in throughput_rows(args.models, size, args.rounds):
            frozen = f"{r['frozen']:>12.2f}" if "frozen" in r else f"{'-':>12}"
            achieved = 3 * r["gflops"] * r["train"]  # training costs about 3x the forward FLOPs
            print(f"{r['model']:<24} {size:>4} {r['params_m']:>8.2f} {r['gflops']:>7.1f} {r['train']:>11.2f} "
                  f"{frozen} {r['infer_b1']:>8.2f} {r['infer_b8']:>8.2f} {achieved / ceiling:>13.1%}", flush=True)
    if not args.pipeline:
        return
    header = f"\n{'model':<24} {'size':>4} {'train img/s':>11} {'plain img/s':>11} {'overhead':>8} {'peak MB':>8}"
    print(header)
    print("-" * (len(header) - 1))
    context = mp.get_context("spawn")
    for name in args.pipeline:
        for size in args.sizes:
            queue = context.Queue()
            process = context.Process(target=pipeline_row,
                                      args=({"model": name, "size": size, "steps": args.pipeline_steps}, queue))
            process.start()
            r = _result(process, queue)
            if r is None:
                print(f"{name:<24} {size:>4} failed: its process ended with exit code {process.exitcode}", flush=True)
                continue
            overhead = 1 - r["masksmith_train"] / r["plain_train"]
            print(f"{name:<24} {size:>4} {r['masksmith_train']:>11.2f} {r['plain_train']:>11.2f} {overhead:>8.1%} "
                  f"{r['peak_mb']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
