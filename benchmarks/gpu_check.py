"""The measuring half of benchmarks/gpu_check.sh: each subcommand writes one JSON file, `table` prints them all.

    python benchmarks/gpu_check.py device --device cuda --out OUT/check/device.json
    python benchmarks/gpu_check.py toy-data OUT/toy                 # the dry run's data: 12 tiny labelled images
    python benchmarks/gpu_check.py train-speed RUN --device cuda --out OUT/check/train_speed.json
    python benchmarks/gpu_check.py infer-speed RUN/model.msb --device cuda --out OUT/check/infer_speed.json
    python benchmarks/gpu_check.py ort RUN/model.onnx --device cuda --out OUT/check/ort.json
    python benchmarks/gpu_check.py request URL IMAGE OUT/served.png --out OUT/check/serve.json
    python benchmarks/gpu_check.py table OUT

train-speed times the run's network as the plan times it (budget.time_training_step: random batches of the run's
batch size at its input size, its frozen stages, on the device) with mixed precision on (CUDA: float16 autocast,
what `--precision auto` trains with there; CPU: bfloat16) and off (float32), and reads each one's peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPEATS = 3  # time_training_step calls per precision (each the best of a few steps)


def write(path: Path, values: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=1))
    print(f"{path.name}: {json.dumps(values)}")


def device_info(args: argparse.Namespace) -> None:
    values: dict[str, Any] = {"device": args.device, "torch": torch.__version__}
    if args.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        values.update(name=properties.name, memory_mib=properties.total_memory // 2**20,
                      gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    else:
        values.update(name="CPU (dry run)", gpus=0, threads=torch.get_num_threads())
    write(args.out, values)


def toy_data(args: argparse.Namespace) -> None:
    """12 RGB 64x64 images with a red square and a blue disc on noise: 3 classes, images/ + masks/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (args.folder / "images").mkdir(parents=True, exist_ok=True)
    (args.folder / "masks").mkdir(parents=True, exist_ok=True)
    (args.folder / "classes.txt").write_text("background\nsquare\ndisc\n")
    rows, cols = np.mgrid[:64, :64]
    for index in range(12):
        image = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        top, left = rng.integers(4, 36, 2)
        mask[top:top + 20, left:left + 20] = 1
        centre_y, centre_x = rng.integers(12, 52, 2)
        mask[(rows - centre_y) ** 2 + (cols - centre_x) ** 2 < 81] = 2
        image[mask == 1] = (200, 30, 30)
        image[mask == 2] = (30, 30, 200)
        Image.fromarray(image).save(args.folder / "images" / f"{index:03d}.png")
        Image.fromarray(mask).save(args.folder / "masks" / f"{index:03d}.png")
    print(f"wrote 12 images and masks to {args.folder}")


def train_speed(args: argparse.Namespace) -> None:
    import yaml

    from masksmith.planning.budget import BFLOAT16, FLOAT16, FLOAT32, time_training_step
    from masksmith.bundle import read_meta

    meta = read_meta(args.run / "model.msb")
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    options = {key: value for key, value in meta.model_options.items() if key not in ("encoder", "weights")}
    encoder = meta.model_options.get("encoder")
    batch, size = int(config["batch_size"]), tuple(meta.input_shape)
    mixed = FLOAT16 if args.device == "cuda" else BFLOAT16
    values: dict[str, Any] = {"batch": batch, "size": list(size), "mixed": mixed}
    for name, precision in (("mixed", mixed), ("float32", FLOAT32)):
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = min(time_training_step(encoder, size, batch, meta.in_channels, meta.out_channels, precision,
                                         model_options=options, frozen_stages=int(config.get("frozen_stages") or 0),
                                         device=args.device) for _ in range(REPEATS))
        values[f"{name}_images_per_s"] = round(batch / seconds, 1)
        values[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated() // 2**20 if args.device == "cuda" else None)
    write(args.out, values)


def infer_speed(args: argparse.Namespace) -> None:
    from masksmith.inference.predictor import Predictor

    predictor = Predictor.load(args.bundle, device=args.device)
    meta = predictor.meta
    size = tuple(meta.input_shape)
    values: dict[str, Any] = {"size": list(size), "device": str(predictor.device)}
    for batch in (1, 8):
        images = torch.randn(batch, meta.in_channels, *size)
        predictor.backend(images)  # warm-up: cuDNN / oneDNN pick their kernels
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.calls):
            started = time.perf_counter()
            predictor.backend(images)  # returns CPU logits: the GPU work is finished
            times.append(time.perf_counter() - started)
        values[f"batch{batch}_images_per_s"] = round(batch / statistics.median(times), 1)
        values[f"batch{batch}_peak_mib"] = torch.cuda.max_memory_allocated() // 2**20 if args.device == "cuda" else None
    write(args.out, values)


def onnx_runtime(args: argparse.Namespace) -> None:
    """The exported model on ONNX Runtime's CUDA provider when installed (onnxruntime-gpu), else its CPU one."""
    import onnxruntime as ort

    from masksmith.inference.backends import OnnxBackend

    available = ort.get_available_providers()
    provider = "CUDAExecutionProvider" if args.device == "cuda" and "CUDAExecutionProvider" in available else \
        "CPUExecutionProvider"
    meta = OnnxBackend(args.model).meta
    session = ort.InferenceSession(str(args.model), providers=[provider])
    size = tuple(meta.input_shape)
    values: dict[str, Any] = {"provider": provider, "providers_installed": available,
                              "used": session.get_providers()[0], "size": list(size)}
    name = session.get_inputs()[0].name
    for batch in (1, 8):
        feed = {name: np.random.default_rng(0).standard_normal((batch, meta.in_channels, *size), np.float32)}
        session.run(None, feed)
        times = []
        for _ in range(args.calls):
            started = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - started)
        values[f"batch{batch}_images_per_s"] = round(batch / statistics.median(times), 1)
    write(args.out, values)


def request(args: argparse.Namespace) -> None:
    """POST one image to /v1/segment as multipart/form-data; the answer must be a PNG."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{args.image.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + args.image.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    url = args.url.rstrip("/") + "/v1/segment"
    call = urllib.request.Request(url, data=body, method="POST",
                                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    started = time.perf_counter()
    with urllib.request.urlopen(call, timeout=120) as response:
        status, payload = response.status, response.read()
    milliseconds = 1000 * (time.perf_counter() - started)
    if not payload.startswith(b"\x89PNG"):
        raise SystemExit(f"{url}: answered {status} without a PNG ({payload[:80]!r})")
    args.png.write_bytes(payload)
    from PIL import Image

    with Image.open(args.png) as mask:
        width, height = mask.size
    write(args.out, {"status": status, "milliseconds": round(milliseconds, 1), "mask": [width, height],
                     "bytes": len(payload)})


def read(folder: Path, name: str) -> dict[str, Any]:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def mib(value: Any) -> str:
    return f"{value} MiB" if value is not None else "n/a (CPU)"


def table(args: argparse.Namespace) -> None:
    out = args.folder
    check = out / "check"
    device, train, infer, ort_values = (read(check, name) for name in ("device", "train_speed", "infer_speed", "ort"))
    title = device.get("name", "?")
    dry = device.get("device") != "cuda"
    served = read(check, "serve")
    run = out / "run"
    results = json.loads((run / "results.json").read_text())
    split = json.loads((run / "split.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    evaluation = json.loads((out / "evaluate" / "metrics.json").read_text())
    predicted = len(list((out / "predict").glob("*.png")))
    train_images = int(split.get("train", 0)) if isinstance(split.get("train"), int) else len(split.get("train", []))
    run_rate = results["epochs_run"] * train_images / results["seconds"]
    chosen = {choice["option"]: choice["value"] for choice in plan["choices"]}
    shown = [key for key in ("encoder", "size", "batch_size", "model_options", "precision", "frozen_stages", "epochs")
             if key in chosen] or list(chosen)
    plan_text = ", ".join(f"{key} {json.dumps(chosen[key])}" for key in shown) or "nothing planned"
    import yaml

    from masksmith.training.parallel import precision_for

    precision = str(yaml.safe_load((run / "config.yaml").read_text()).get("precision"))
    lightning = precision_for(precision, gpu=not dry)
    mixed_on = "on" if lightning.endswith("-mixed") else "off"
    ddp_results = out / "ddp" / "results.json"
    skipped = check / "ddp_skipped.txt"
    if ddp_results.exists():
        ddp = json.loads(ddp_results.read_text())
        ddp_text = (f"{ddp['epochs_run']} epochs in {ddp['seconds']:.0f} s, best {ddp['monitor']} "
                    f"{ddp['best_score']:.4f}")
    else:
        ddp_text = skipped.read_text().strip() if skipped.exists() else "not run"
    peak = (out / "check" / "gpu_memory_peak.txt")
    smi = peak.read_text().strip() if peak.exists() else ""
    rows = [
        ("device", f"{title}" + (f", {device.get('memory_mib')} MiB, {device.get('gpus')} GPU(s), CUDA "
                                 f"{device.get('cuda')}" if not dry else f", threads {device.get('threads')}")
         + f", torch {device.get('torch')}"),
        ("plan's choices", plan_text),
        ("mixed precision of the run", f"{mixed_on}: precision {precision} (Lightning {lightning})"),
        ("train (masksmith train, whole run)", f"{run_rate:.1f} images/s ({results['epochs_run']} epochs of "
                                               f"{train_images} images in {results['seconds']:.0f} s)"),
        ("GPU memory during train (nvidia-smi peak)", f"{smi} MiB" if smi else "n/a (no nvidia-smi)"),
        (f"train step, mixed precision on ({train.get('mixed')})",
         f"{train.get('mixed_images_per_s')} images/s, peak {mib(train.get('mixed_peak_mib'))}"),
        ("train step, mixed precision off (float32)",
         f"{train.get('float32_images_per_s')} images/s, peak {mib(train.get('float32_peak_mib'))}"),
        ("evaluate", f"mIoU {evaluation.get('miou', float('nan')):.4f}, mean Dice "
                     f"{evaluation.get('mean_dice', float('nan')):.4f}"),
        ("inference, PyTorch, batch 1", f"{infer.get('batch1_images_per_s')} images/s, peak "
                                        f"{mib(infer.get('batch1_peak_mib'))}"),
        ("inference, PyTorch, batch 8", f"{infer.get('batch8_images_per_s')} images/s, peak "
                                        f"{mib(infer.get('batch8_peak_mib'))}"),
        ("predict", f"{predicted} masks written"),
        (f"ONNX Runtime, {ort_values.get('used', '?')}", f"{ort_values.get('batch1_images_per_s')} / "
                                                          f"{ort_values.get('batch8_images_per_s')} images/s at batch "
                                                          "1 / 8"),
        ("serve, one request", f"HTTP {served.get('status')}, {served.get('milliseconds')} ms, mask "
                               f"{'x'.join(map(str, served.get('mask', [])))}"),
        ("train --devices N", ddp_text),
    ]
    size = "x".join(map(str, infer.get("size", [])))
    heading = "DRY RUN on the CPU: toy data and network, the commands checked; no GPU numbers" if dry else \
        f"GPU check on {title}"
    print(f"\n{heading} (inference at {size})\n")
    print("| check | result |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("device")
    command.add_argument("--device", choices=["cpu", "cuda"], required=True)
    command.add_argument("--out", type=Path, required=True)
    command.set_defaults(handler=device_info)
    command = commands.add_parser("toy-data")
    command.add_argument("folder", type=Path)
    command.set_defaults(handler=toy_data)
    command = commands.add_parser("train-speed")
    command.add_argument("run", type=Path)
    command.add_argument("--device", choices=["cpu", "cuda"], required=True)
    command.add_argument("--out", type=Path, required=True)
    command.set_defaults(handler=train_speed)
    for name, handler, argument in (("infer-speed", infer_speed, "bundle"), ("ort", onnx_runtime, "model")):
        command = commands.add_parser(name)
        command.add_argument(argument, type=Path)
        command.add_argument("--device", choices=["cpu", "cuda"], required=True)
        command.add_argument("--calls", type=int, default=10)
        command.add_argument("--out", type=Path, required=True)
        command.set_defaults(handler=handler)
    command = commands.add_parser("request")
    command.add_argument("url")
    command.add_argument("image", type=Path)
    command.add_argument("png", type=Path)
    command.add_argument("--out", type=Path, required=True)
    command.set_defaults(handler=request)
    command = commands.add_parser("table")
    command.add_argument("folder", type=Path)
    command.set_defaults(handler=table)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
