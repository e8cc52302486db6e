"""End-to-end `masksmith predict` with decoding and writing beside the model, against one step after the other.

    python benchmarks/predict_pipeline.py MODEL.msb [--images 640] [--side 512] [--batch 4] [--rounds 1]

The images are membrane slices of /work/shared/data/isbi2012-membrane (or --source): its 60 slices in their
8 flips and rotations, as they are and inverted, cut or scaled to --side, as --images distinct PNGs (made
once under --work). For MODEL as given (the default backend) and for MODEL exported to ONNX beforehand,
`masksmith predict MODEL DIR --out O` runs as its own process, sequential ($MASKSMITH_PIPELINE_DEPTH=0)
and overlapped (the default), in turn (order reversed every round), into fresh folders. The table gives
each run's wall time, its images/s after start-up (from the first mask written to the last, by their
modification times), the peak memory of the process (PSS, sampled every 0.2 s), the load average of the
machine while it ran, and the backend's own rate: the same backend in this process timed on batches of
--batch preprocessed images of the same size (the model alone, as benchmarks/inference.py times it).
The overlapped outputs are checked to be the sequential ones byte for byte.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from batch_predict import same_bytes, tree_pss_mb  # noqa: I001  (benchmarks/, the script's own folder)

from masksmith.data.dataset import preprocess_image
from masksmith.data.images import read_image
from masksmith.inference.pipeline import DEPTH_ENV_VAR
from masksmith.predict import Predictor

MASKSMITH = [sys.executable, "-c", "from masksmith.cli import main; main()"]
SOURCE = Path("/work/shared/data/isbi2012-membrane")


def make_slices(source: Path, folder: Path, count: int, side: int) -> Path:
    """`count` distinct membrane PNGs of side x side under folder (made once; reused when complete)."""
    marker = folder / f".complete-{count}-{side}"
    if marker.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    slices = sorted(source.glob("*/images/*.png"))
    made = 0
    for variant in range(16):  # 8 flips and rotations, each also inverted
        for path in slices:
            if made == count:
                break
            image = read_image(path, channels=1)[:, :, 0]
            image = np.rot90(image, variant % 4)
            image = image[:, ::-1] if variant % 8 >= 4 else image
            image = 255 - image if variant >= 8 else image
            picture = Image.fromarray(np.ascontiguousarray(image))
            if picture.width >= side:  # a centred crop: the slices' own scale
                left = (picture.width - side) // 2
                picture = picture.crop((left, left, left + side, left + side))
            else:
                picture = picture.resize((side, side), Image.BILINEAR)
            picture.save(folder / f"slice{made:04d}.png")
            made += 1
    if made < count:
        raise SystemExit(f"{source}: only {made} distinct slices can be made, asked for {count}")
    marker.touch()
    return folder


@dataclass
class Run:
    seconds: float
    rate: float  # images/s from the first mask written to the last
    peak_mb: float
    load: tuple[float, float]  # 1-minute load average before and after


def run_predict(model: Path, images: Path, out: Path, batch: int, sequential: bool) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    env.pop(DEPTH_ENV_VAR, None)
    if sequential:
        env[DEPTH_ENV_VAR] = "0"
    command = [*MASKSMITH, "predict", str(model), str(images), "--out", str(out), "-q", "-b", str(batch)]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak, done = 0.0, threading.Event()

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
        raise SystemExit(f"predict failed ({process.returncode}):\n{output[-3000:]}")
    times = sorted(path.stat().st_mtime for path in out.glob("*.png"))
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    return Run(seconds, rate, peak, (load_before, os.getloadavg()[0]))


def backend_rate(model: Path, images: Path, batch: int, seconds: float) -> tuple[str, float]:
    """(backend name, images/s) of the backend `predict` loads for `model`, on preprocessed batches alone."""
    predictor = Predictor.load(model, device="cpu")
    files = sorted(images.glob("*.png"))[:batch]
    tensor = torch.cat([preprocess_image(read_image(path, channels=predictor.meta.in_channels),
                                         predictor.input_size, predictor.meta.mean, predictor.meta.std)
                        for path in files])
    with torch.inference_mode():
        predictor.backend(tensor)  # warm-up: allocator, kernel choice, ONNX Runtime's first-run work
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            predictor.backend(tensor)
            calls += 1
        elapsed = time.perf_counter() - started
    return predictor.backend_name, calls * len(files) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a bundle (model.msb), e.g. the default `masksmith train` of "
                        "the membrane slices")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="predict's --batch-size (its default: 4)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0, help="timing of the backend alone")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--work", type=Path, default=Path("runs/bench/predict_pipeline"))
    parser.add_argument("--no-onnx", action="store_true", help="only the bundle, not its ONNX export")
    args = parser.parse_args()

    images = make_slices(args.source, args.work / f"slices-{args.side}", args.images, args.side)
    models = {"MODEL.msb": args.model.resolve()}
    if not args.no_onnx:
        onnx = args.work / f"{args.model.stem}.onnx"
        if not onnx.is_file() or onnx.stat().st_mtime < args.model.stat().st_mtime:
            subprocess.run([*MASKSMITH, "export", str(args.model), "--out", str(onnx)], check=True,
                           stdout=subprocess.DEVNULL)
        models["MODEL.onnx (exported beforehand)"] = onnx.resolve()

    runs: dict[tuple[str, bool], list[Run]] = {}
    for name, model in models.items():
        for round_ in range(args.rounds):
            for sequential in ((True, False) if round_ % 2 == 0 else (False, True)):
                out = args.work / "out" / f"{Path(model).suffix[1:]}-{'seq' if sequential else 'overlap'}"
                run = run_predict(model, images, out, args.batch, sequential)
                runs.setdefault((name, sequential), []).append(run)
                print(f"{name} {'sequential' if sequential else 'overlapped'}: {run.seconds:.1f} s, "
                      f"{run.rate:.1f} img/s, load {run.load[0]:.2f}->{run.load[1]:.2f}", flush=True)
        suffix = Path(model).suffix[1:]
        compared, differ = same_bytes(args.work / "out" / f"{suffix}-seq", args.work / "out" / f"{suffix}-overlap")
        print(f"{name}: {compared} masks compared, {differ} differ between sequential and overlapped")

    rates = {name: backend_rate(model, images, args.batch, args.seconds) for name, model in models.items()}
    print(f"\n{args.images} membrane slices of {args.side}x{args.side} PNG, --batch-size {args.batch}, "
          f"{torch.get_num_threads()} threads; best of {args.rounds} round(s); load average (1 min) before -> after\n")
    print("| command | pipeline | seconds | images/s after start-up | of the backend's own rate | peak MB | load |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    baseline = min(runs[(next(iter(models)), True)], key=lambda run: run.seconds)
    for name in models:
        backend, rate = rates[name]
        for sequential in (True, False):
            best = min(runs[(name, sequential)], key=lambda run: run.seconds)
            speedup = baseline.seconds / best.seconds
            print(f"| `masksmith predict {name} DIR --out O` ({backend}) | "
                  f"{'sequential' if sequential else 'overlapped'} | {best.seconds:.1f} ({speedup:.2f}x) | "
                  f"{best.rate:.1f} | {100 * best.rate / rate:.0f}% | {best.peak_mb:.0f} | "
                  f"{best.load[0]:.2f} -> {best.load[1]:.2f} |")
    for name in models:
        backend, rate = rates[name]
        print(f"| backend alone: {backend} of {name}, batch {args.batch}, {args.side}² | | | {rate:.1f} | 100% | | "
              f"{os.getloadavg()[0]:.2f} |")


if __name__ == "__main__":
    main()
