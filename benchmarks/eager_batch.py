"""Eager PyTorch on the CPU, batch 1 against batch 8 and a training step, with freed memory kept and without.

    python benchmarks/eager_batch.py [BUNDLE.msb] [--threads 2] [--seconds 3] [--cells 256x1 256x8 512x1 512x8]
                                     [--train-cells 256x8 384x256x8] [--clock wall|process]

Without a bundle it trains (once, kept in runs/bench/inference/) the membrane U-Net over EfficientNet-Lite0 that
benchmarks/inference.py trains. The fixed path is what masksmith runs: glibc's malloc keeps freed tensor memory
(masksmith.core.cpu_memory); the baseline is malloc as glibc ships it (MASKSMITH_SYSTEM_MALLOC=1), which unmaps every
block over 32 MiB when it is freed, so the kernel zero-fills the next one page by page. malloc is set per process,
so each runs in a worker process of its own (this script with --worker) and this one drives them: one call in each
worker in turn, order reversed every round, so load from other processes slows both alike. Inference: TorchBackend
eager (optimize=False) and optimized (BN folded, channels_last), images/s of the best call (the median's in
brackets) and the page faults of a call per image. Training: a step of the bundle's network (Adam, cross-entropy,
random batch: benchmarks/speed.py's step) in float32 and under bfloat16 autocast, ms per image of the best step.
Last, each worker's peak RSS: what keeping the memory costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import label, parse_cell, train_demo_model  # noqa: E402

from masksmith.core.cpu_memory import OPT_OUT, keep_freed_memory  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "runs" / "bench" / "inference" / "unet-efficientnet_lite0" / "run"
MALLOCS = {"kept (masksmith)": "0", "as glibc ships it (baseline)": "1"}


def worker(bundle: Path, threads: int, clock_name: str) -> None:
    """Answer timing requests read from stdin, one JSON line each, with one JSON line: seconds and page faults."""
    from speed import training_step

    from masksmith.inference.backends import TorchBackend
    from masksmith.bundle import load_network
    from masksmith.models.registry import build_model

    tuned = keep_freed_memory()  # as masksmith's train and predict do, unless MASKSMITH_SYSTEM_MALLOC=1
    meta, network = load_network(bundle)
    backends = {"eager": TorchBackend(network, optimize=False, threads=threads),
                "optimized": TorchBackend(network, optimize=True, threads=threads)}
    torch.set_num_threads(threads)
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    inputs: dict = {}
    steps: dict = {}
    print(json.dumps({"ready": True, "tuned": tuned}), flush=True)
    for line in sys.stdin:
        task = json.loads(line)
        height, width, batch = task["cell"]
        if task["kind"] == "infer":
            images = inputs.setdefault((height, width, batch), torch.randn(batch, meta.in_channels, height, width))
            call = (lambda: backends[task["backend"]](images))
        else:
            key = (height, width, batch)
            if key not in steps:
                torch.manual_seed(0)
                model = build_model(meta.model, meta.in_channels, meta.out_channels, **{
                    name: value for name, value in meta.model_options.items() if name != "weights"})
                steps[key] = training_step(model, torch.randn(batch, meta.in_channels, height, width),
                                           torch.randint(0, meta.out_channels, (batch, height, width)))
            bf16 = task["precision"] == "bf16"
            step = steps[key]

            def call() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                    step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = clock()
        call()
        seconds = clock() - started
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux
        print(json.dumps({"seconds": seconds, "faults": faults, "peak_mib": peak}), flush=True)


def start_workers(bundle: Path, threads: int, clock: str) -> dict[str, subprocess.Popen]:
    workers = {}
    for name, opt_out in MALLOCS.items():
        env = {**os.environ, OPT_OUT: opt_out, "OMP_NUM_THREADS": str(threads)}
        workers[name] = subprocess.Popen(
            [sys.executable, __file__, str(bundle), "--worker", "--threads", str(threads), "--clock", clock],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    for name, process in workers.items():
        reply = json.loads(process.stdout.readline())
        print(f"worker '{name}': malloc tuned {reply['tuned']}", flush=True)
    return workers


def ask(process: subprocess.Popen, task: dict) -> dict:
    process.stdin.write(json.dumps(task) + "\n")
    process.stdin.flush()
    return json.loads(process.stdout.readline())


def time_tasks(workers: dict, tasks: list[dict], seconds: float, least: int = 3) -> dict:
    """Each (worker, task) pair timed in turn, order reversed every round, for `seconds` per pair (at least `least`
    rounds); the first call of each is a warm-up (oneDNN picks kernels, malloc grows its heap)."""
    pairs = [(name, index) for index in range(len(tasks)) for name in workers]
    for name, index in pairs:
        ask(workers[name], tasks[index])
    results: dict = {pair: [] for pair in pairs}
    deadline = time.perf_counter() + seconds * len(pairs)
    rounds = 0
    while rounds < least or time.perf_counter() < deadline:
        for name, index in pairs:
            results[name, index].append(ask(workers[name], tasks[index]))
        pairs.reverse()
        rounds += 1
    return results


def size_label(height: int, width: int) -> str:
    return f"{height}²" if height == width else f"{height}×{width}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per cell and variant")
    parser.add_argument("--cells", nargs="*", default=["256x1", "256x8", "512x1", "512x8"],
                        help="inference: SIDExBATCH or HEIGHTxWIDTHxBATCH")
    parser.add_argument("--train-cells", nargs="*", default=["256x8", "384x256x8"], help="training steps, as --cells")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="process: CPU seconds of the worker (steadier on a shared machine; with 1 thread the "
                             "wall time a quiet machine would show, with more it counts threads waiting too)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    bundle = args.bundle or DEMO / "model.msb"
    if args.worker:
        worker(bundle, args.threads, args.clock)
        return
    cells, train_cells = [parse_cell(cell) for cell in args.cells], [parse_cell(cell) for cell in args.train_cells]
    if not bundle.exists():
        bundle = train_demo_model("unet:efficientnet_lite0", DEMO)
    from masksmith.bundle import read_meta

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"{label(read_meta(bundle))} ({bundle}), {args.threads} threads, {cpu}, torch {torch.__version__}, "
          f"{args.clock} clock", flush=True)
    workers = start_workers(bundle, args.threads, args.clock)
    try:
        tasks = [{"kind": "infer", "backend": backend, "cell": cell} for backend in ("eager", "optimized")
                 for cell in cells]
        tasks += [{"kind": "train", "precision": precision, "cell": cell} for precision in ("fp32", "bf16")
                  for cell in train_cells]
        results = time_tasks(workers, tasks, args.seconds)
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait(timeout=60)

    def cell_of(name: str, task: dict) -> tuple[float, float, float]:
        """(best seconds, median seconds, median page faults) of a task in a worker."""
        index = tasks.index(task)
        runs = results[name, index]
        seconds = [run["seconds"] for run in runs]
        return min(seconds), statistics.median(seconds), statistics.median(run["faults"] for run in runs)

    if cells:
        print("\nInference, images/s of the best call (median call), page faults per image")
        print("| backend | malloc | " + " | ".join(f"{size_label(h, w)}, batch {b}" for h, w, b in cells) + " |")
        print("|---|---" + "|---" * len(cells) + "|")
        for backend in ("eager", "optimized"):
            for name in workers:
                row = []
                for height, width, batch in cells:
                    best, median, faults = cell_of(name, {"kind": "infer", "backend": backend,
                                                          "cell": (height, width, batch)})
                    row.append(f"{batch / best:.1f} ({batch / median:.1f}), {faults / batch:.0f} faults")
                print(f"| {backend} | {name} | " + " | ".join(row) + " |")
    peaks = {name: max(run["peak_mib"] for runs in (results[name, index] for index in range(len(tasks)))
                       for run in runs) for name in workers}
    print("\npeak RSS of each worker (all its cells): " + ", ".join(f"malloc {name} {peak} MiB"
                                                                  for name, peak in peaks.items()))
    if train_cells:
        print("\nTraining step, ms per image of the best step (median step), page faults per image")
        print("| precision | malloc | " + " | ".join(f"{size_label(h, w)}, batch {b}" for h, w, b in train_cells)
              + " |")
        print("|---|---" + "|---" * len(train_cells) + "|")
        for precision in ("fp32", "bf16"):
            for name in workers:
                row = []
                for height, width, batch in train_cells:
                    best, median, faults = cell_of(name, {"kind": "train", "precision": precision,
                                                          "cell": (height, width, batch)})
                    row.append(f"{1000 * best / batch:.0f} ({1000 * median / batch:.0f}), {faults / batch:.0f} faults")
                print(f"| {precision} | {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
