"""Batch prediction at scale: the local `predict` against `predict --engine ray` on the same images, side by side.

    python benchmarks/batch_predict.py [--images 2000,20000] [--side 256] [--bundle MODEL.msb]

Without a bundle it builds an untrained membrane U-Net (--model demo: the demo's, 16 channels, depth 4,
256 px input; small: 8 channels, depth 3, 128 px, where the engine's own cost shows most). The images are the shipped membrane slices (examples/membrane,
30 distinct 512x512 PNGs) scaled to --side and hard-linked under nested folders (1,000 a folder) up to
each count, so every file is really decoded, predicted and written. For each count the two engines run
one after the other as separate `masksmith predict` processes into fresh output folders, and the table
gives the wall time, images/s and the peak memory of the whole process tree (the sum of PSS, so Ray's
shared object store counts once; sampled every 0.2 s), and checks that the two engines wrote the same
bytes. The Ray run includes starting a local Ray instance (its start-up is printed separately).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from masksmith.bundle import BundleMeta, save_bundle
from masksmith.models import build_model

REPO = Path(__file__).resolve().parents[1]
MASKSMITH = [sys.executable, "-c", "from masksmith.cli import main; main()"]
PER_FOLDER = 1000


# The untrained stand-ins (speed does not depend on the weights): the demo's U-Net, and a small one whose
# per-image cost is mostly decoding and writing, where an engine's own overhead shows most.
MODELS = {"demo": ({"base_channels": 16, "depth": 4}, 256), "small": ({"base_channels": 8, "depth": 3}, 128)}


def untrained_bundle(path: Path, model: str) -> Path:
    """A membrane U-Net of the named size as a bundle."""
    torch.manual_seed(0)
    options, size = MODELS[model]
    network = build_model("unet", 1, 2, **options)
    meta = BundleMeta(model="unet", model_options=options, in_channels=1, out_channels=2,
                      class_names=["background", "membrane"], colors=[[0, 0, 0], [255, 0, 0]], size=size,
                      resize="resize", mean=[0.5], std=[0.25], mask_encoding={"kind": "index"})
    return save_bundle(path, network.state_dict(), meta)


def make_images(folder: Path, count: int, side: int) -> Path:
    """`count` image files under folder/dNNN/ (hard links to 30 distinct scaled slices); reused when present."""
    if (folder / ".complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    sources = sorted((REPO / "examples" / "membrane").glob("*/*.png"))
    sources = [p for p in sources if p.parent.name in ("images", "test")]
    pool = folder / "pool"
    pool.mkdir(parents=True)
    distinct = []
    for index, source in enumerate(sources):
        target = pool / f"{index}.png"
        Image.open(source).convert("L").resize((side, side), Image.BILINEAR).save(target)
        distinct.append(target)
    for index in range(count):
        target = folder / f"d{index // PER_FOLDER:03d}" / f"img{index:06d}.png"
        target.parent.mkdir(exist_ok=True)
        os.link(distinct[index % len(distinct)], target)
    shutil.rmtree(pool)
    (folder / ".complete").touch()
    return folder


def tree_pss_mb(root_pid: int) -> float:
    """The summed proportional set size (MB) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                total += next(int(line.split()[1]) for line in handle if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


@dataclass
class Run:
    seconds: float
    peak_mb: float


def run_measured(name: str, command: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Run `command` to its end: its output, its wall seconds and the peak PSS (MB) of its process tree, sampled
    every 0.2 s."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss_mb(process.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{name} failed ({process.returncode}):\n{output[-3000:]}")
    return output, seconds, peak


def run_engine(engine: str, bundle: Path, images: Path, out: Path, batch: int, extra: list[str]) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    command = [*MASKSMITH, "predict", str(bundle), str(images), "--out", str(out), "-q", "-b", str(batch),
               "--engine", engine, *extra]
    _, seconds, peak = run_measured(engine, command)
    return Run(seconds, peak)


def same_bytes(a: Path, b: Path) -> tuple[int, int]:
    """(files compared, files that differ) between two output trees."""
    compared = differ = 0
    for path in a.rglob("*.png"):
        compared += 1
        other = b / path.relative_to(a)
        differ += not (other.is_file() and filecmp.cmp(path, other, shallow=False))
    return compared, differ


def ray_startup_seconds() -> float:
    code = ("import time,ray; t=time.perf_counter(); ray.init(num_cpus=os.cpu_count(), include_dashboard=False, "
            "log_to_driver=False); print(time.perf_counter()-t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", "import os;" + code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="2000,20000", help="image counts, comma-separated")
    parser.add_argument("--side", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", choices=sorted(MODELS), default="small",
                        help="untrained stand-in: demo (the demo's U-Net, 256 px input) or small (8 channels, "
                             "depth 3, 128 px)")
    parser.add_argument("--bundle", type=Path, help="a model to use instead of --model")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "batch_predict")
    parser.add_argument("--ray-args", default="", help="extra options for the ray engine, e.g. '--actors 2'")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or untrained_bundle(args.work / f"{args.model}.msb", args.model)
    print(f"cpus {os.cpu_count()}, torch {torch.__version__}, bundle {bundle}, {args.side}x{args.side} PNGs, "
          f"batch {args.batch_size}; ray start-up alone: {ray_startup_seconds():.1f} s", flush=True)
    rows = []
    for count in (int(n) for n in args.images.split(",")):
        images = make_images(args.work / f"images-{count}-{args.side}", count, args.side)
        runs = {}
        for engine in ("local", "ray"):
            extra = args.ray_args.split() if engine == "ray" else []
            runs[engine] = run_engine(engine, bundle, images, args.work / f"out-{engine}", args.batch_size, extra)
            print(f"  {count} images, {engine}: {runs[engine].seconds:.1f} s, peak {runs[engine].peak_mb:.0f} MB",
                  flush=True)
        compared, differ = same_bytes(args.work / "out-local", args.work / "out-ray")
        rows.append((count, runs, compared, differ))
    print()
    print("| images | engine | wall s | images/s | vs local | peak memory (PSS, MB) | masks identical |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for count, runs, compared, differ in rows:
        local = runs["local"]
        for engine, run in runs.items():
            ratio = (count / run.seconds) / (count / local.seconds)
            same = f"{compared - differ}/{compared}" if engine == "ray" else ""
            print(f"| {count} | {engine} | {run.seconds:.1f} | {count / run.seconds:.1f} | {ratio:.2f}x | "
                  f"{run.peak_mb:.0f} | {same} |")


if __name__ == "__main__":
    main()
