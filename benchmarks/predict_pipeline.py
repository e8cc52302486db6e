"""End-to-end `masksmith predict` with decoding and writing beside the model, against one step after the other.

    python benchmarks/predict_pipeline.py MODEL.msb [--images 640] [--side 512] [--batch 4] [--chunk 32] [--cli]

The images are membrane slices of /work/shared/data/isbi2012-membrane (or --source): its 60 slices in their
8 flips and rotations, as they are and inverted, cut or scaled to --side, as --images distinct PNGs (made
once under --work). For MODEL as `predict` loads it (its default backend) and for MODEL exported to ONNX
beforehand, this process times, chunk by chunk (--chunk images) and interleaved (the order turned every
chunk), so that the load of other processes slows all of them alike:
  sequential  - predict_files as `masksmith predict MODEL DIR --out O` runs it, one step after the other
                (what $MASKSMITH_PIPELINE_DEPTH=0 gives);
  overlapped  - the same with the default pipeline depth (decoding ahead, writing behind);
  backend     - the backend alone on the same images, preprocessed beforehand, --batch at a time (the
                model's own rate, as benchmarks/inference.py times it).
The masks of the two predict variants are compared byte for byte. --cli also runs the whole command
once per variant as its own process (wall time with start-up, and images/s from the first mask written
to the last by their modification times). The load average (1 minute) is printed beside the numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from batch_predict import (  # benchmarks/, the script's own folder
    MASKSMITH,
    run_measured,
    same_bytes,
)
from PIL import Image

from masksmith.data.transforms import preprocess_image
from masksmith.data.images import read_image
from masksmith.inference.ensemble import load_models
from masksmith.inference.pipeline import DEPTH_ENV_VAR
from masksmith.inference.predictor import predict_files

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
    _, seconds, peak = run_measured("predict", command, env)
    times = sorted(path.stat().st_mtime for path in out.glob("*.png"))
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    return Run(seconds, rate, peak, (load_before, os.getloadavg()[0]))


def time_interleaved(model: Path, images: Path, out: Path, batch: int, chunk: int) -> dict[str, float]:
    """Seconds each variant (sequential, overlapped, backend) took over all images, chunk by chunk in turn."""
    predictor = load_models([model], device="cpu")  # as `masksmith predict` loads it
    files = sorted(images.glob("*.png"))
    seconds = {"sequential": 0.0, "overlapped": 0.0, "backend": 0.0}
    for folder in ("sequential", "overlapped"):
        shutil.rmtree(out / folder, ignore_errors=True)

    def run(variant: str, paths: list[Path]) -> None:
        if variant == "backend":
            tensors = [torch.cat([preprocess_image(read_image(path, channels=predictor.meta.in_channels),
                                                   predictor.input_size, predictor.meta.mean, predictor.meta.std)
                                  for path in paths[start:start + batch]]) for start in range(0, len(paths), batch)]
            started = time.perf_counter()
            with torch.inference_mode():
                for tensor in tensors:
                    predictor.backend(tensor)
        else:
            started = time.perf_counter()
            predict_files(predictor, paths, out / variant, batch_size=batch, progress=False,
                          depth=0 if variant == "sequential" else None)
        seconds[variant] += time.perf_counter() - started

    for variant in seconds:  # warm-up: allocator, kernel choice, ONNX Runtime's first-run work
        run(variant, files[:batch])
        seconds[variant] = 0.0
    order = list(seconds)
    for index, start in enumerate(range(0, len(files), chunk)):
        for variant in order[index % 3:] + order[:index % 3]:
            run(variant, files[start:start + chunk])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a bundle (model.msb), e.g. the default `masksmith train` of "
                        "the membrane slices")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="predict's --batch-size (its default: 4)")
    parser.add_argument("--chunk", type=int, default=32, help="images per turn of each variant")
    parser.add_argument("--cli", action="store_true", help="also run each whole command once as its own process")
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

    load_before = os.getloadavg()
    timed = {}
    for name, model in models.items():
        timed[name] = time_interleaved(model, images, args.work / "out" / Path(model).suffix[1:], args.batch,
                                       args.chunk)
        compared, differ = same_bytes(args.work / "out" / Path(model).suffix[1:] / "sequential",
                                      args.work / "out" / Path(model).suffix[1:] / "overlapped")
        print(f"{name}: {compared} masks compared, {differ} differ between sequential and overlapped", flush=True)
    load_after = os.getloadavg()
    backends = {name: load_models([model], device="cpu").backend_name for name, model in models.items()}
    print(f"\n{args.images} membrane slices of {args.side}x{args.side} PNG, --batch-size {args.batch}, "
          f"{torch.get_num_threads()} threads, chunks of {args.chunk} interleaved; load average (1, 5, 15 min) "
          f"{' '.join(f'{v:.1f}' for v in load_before)} before, {' '.join(f'{v:.1f}' for v in load_after)} after\n")
    print("| `masksmith predict` of | backend | sequential img/s | overlapped img/s | backend alone img/s | "
          "overlapped / sequential | overlapped / backend alone | overlapped / first row's sequential |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    baseline = args.images / timed[next(iter(models))]["sequential"]
    for name in models:
        rate = {variant: args.images / seconds for variant, seconds in timed[name].items()}
        print(f"| {name} | {backends[name]} | {rate['sequential']:.2f} | {rate['overlapped']:.2f} | "
              f"{rate['backend']:.2f} | {rate['overlapped'] / rate['sequential']:.2f}x | "
              f"{100 * rate['overlapped'] / rate['backend']:.0f}% | {rate['overlapped'] / baseline:.2f}x |")
    if not args.cli:
        return

    print("\nWhole commands, one process each (start-up included):\n")
    print("| command | pipeline | seconds | images/s after start-up | peak MB | load before -> after |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name, model in models.items():
        for sequential in (True, False):
            out = args.work / "out" / f"cli-{Path(model).suffix[1:]}-{'seq' if sequential else 'overlap'}"
            run = run_predict(model, images, out, args.batch, sequential)
            print(f"| `masksmith predict {name} DIR --out O` | {'sequential' if sequential else 'overlapped'} | "
                  f"{run.seconds:.1f} | {run.rate:.2f} | {run.peak_mb:.0f} | {run.load[0]:.1f} -> {run.load[1]:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
