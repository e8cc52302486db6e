"""Eager PyTorch on the CPU: images/s at batch 1 and batch 8, sub-batched as TorchBackend runs it and unsplit.

    python benchmarks/eager_batch.py [BUNDLE.msb] [--threads 2] [--seconds 3] [--cells 256x1 256x8 512x1 512x8]
                                     [--sub-batches 1 2 4 8]

Without a bundle it trains (once, kept in runs/bench/inference/) the membrane U-Net over EfficientNet-Lite0 that
benchmarks/inference.py trains. Four backends of the same network: eager (`optimize=False`) and optimized (BN
folded, channels_last), each as TorchBackend runs it (sub-batches of at most CPU_SUB_BATCH_PIXELS input pixels)
and with the whole batch in one call (`sub_batch_pixels=None`, the baseline). All are timed interleaved, one
call each in turn (order reversed every round), so load from other processes slows them alike; a cell is the
best call's images/s (the median's in brackets). The second table times a batch of 8 split into sub-batches of
each --sub-batches size: where the per-image speed peaks is what CPU_SUB_BATCH_PIXELS is set from. The last
column checks that the sub-batched logits equal the unsplit ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import label, parse_cell, time_interleaved, train_demo_model  # noqa: E402

from masksmith.backends import CPU_SUB_BATCH_PIXELS, TorchBackend  # noqa: E402
from masksmith.bundle import load_network  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "runs" / "bench" / "inference" / "unet-efficientnet_lite0" / "run"


def rate(times: list[float], batch: int) -> str:
    """'best (median)' images/s of a list of call times."""
    return f"{batch / min(times):.1f} ({batch / statistics.median(times):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell and backend")
    parser.add_argument("--cells", nargs="+", default=["256x1", "256x8", "512x1", "512x8"],
                        help="SIDExBATCH or HEIGHTxWIDTHxBATCH")
    parser.add_argument("--sub-batches", nargs="*", type=int, default=[1, 2, 4, 8],
                        help="sub-batch sizes of a batch of 8 timed at each size of --cells (none: skip)")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="process: CPU seconds of this process (steadier on a shared machine; with 1 thread the "
                             "wall time a quiet machine would show, with more it counts threads waiting too)")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    cells = [parse_cell(cell) for cell in args.cells]
    bundle = args.bundle or DEMO / "model.msb"
    if not bundle.exists():
        bundle = train_demo_model("unet:efficientnet_lite0", DEMO)
    meta, network = load_network(bundle)
    backends = {}
    for name, optimize in (("eager", False), ("optimized", True)):
        backends[name] = TorchBackend(network, optimize=optimize, threads=args.threads)
        backends[f"{name}, whole batch"] = TorchBackend(network, optimize=optimize, threads=args.threads,
                                                        sub_batch_pixels=None)
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"{label(meta)} ({bundle}), {torch.get_num_threads()} threads, {cpu}, torch {torch.__version__}; "
          f"sub-batches of at most {CPU_SUB_BATCH_PIXELS} pixels; {args.clock} clock")

    rows: dict[str, dict[tuple[int, int, int], str]] = {name: {} for name in backends}
    equal: dict[tuple[int, int, int], float] = {}
    for height, width, batch in cells:
        images = torch.randn(batch, meta.in_channels, height, width)
        calls = {name: partial(backend, images) for name, backend in backends.items()}
        times = time_interleaved(calls, args.seconds, clock=clock)
        for name in backends:
            rows[name][height, width, batch] = rate(times[name], batch)
        equal[height, width, batch] = float((backends["eager"](images) - backends["eager, whole batch"](images))
                                            .abs().max())
    sizes = [f"{h}²" if h == w else f"{h}×{w}" for h, w, _ in cells]
    print("\nimages/s, best call (median): " + ", ".join(f"{size} batch {b}" for size, (_, _, b) in zip(sizes, cells)))
    print("| backend | " + " | ".join(f"{size}, batch {b}" for size, (_, _, b) in zip(sizes, cells)) + " |")
    print("|---" * (len(cells) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row[cell] for cell in cells) + " |")
    print("max |logits sub-batched - whole batch|: " + ", ".join(
        f"{size} b{b} {equal[cell]:.1e}" for size, cell, (_, _, b) in zip(sizes, cells, cells)))

    if not args.sub_batches:
        return
    print("\nbatch 8 in sub-batches of n, images/s, best call (median)")
    print("| backend | size | " + " | ".join(f"n = {n}" for n in args.sub_batches) + " |")
    print("|---|---" + "|---" * len(args.sub_batches) + "|")
    for height, width in dict.fromkeys((h, w) for h, w, _ in cells):
        images = torch.randn(8, meta.in_channels, height, width)
        calls = {}
        for name, optimize in (("eager", False), ("optimized", True)):
            for n in args.sub_batches:
                backend = TorchBackend(network, optimize=optimize, threads=args.threads,
                                       sub_batch_pixels=n * height * width)
                calls[name, n] = partial(backend, images)
        torch.set_num_threads(args.threads)
        times = time_interleaved(calls, args.seconds, clock=clock)
        for name in ("eager", "optimized"):
            size = f"{height}²" if height == width else f"{height}×{width}"
            print(f"| {name} | {size} | " + " | ".join(rate(times[name, n], 8) for n in args.sub_batches) + " |")


if __name__ == "__main__":
    main()
