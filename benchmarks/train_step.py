"""Milliseconds per image of one training step at a recipe's input: float32 against bfloat16 autocast.

    python benchmarks/train_step.py [--size 288x192] [--classes 59] [--batch 8] [--rounds 5]
                                    [--formats contiguous channels_last] [--frozen-stages 2 3]
                                    [--models unet:efficientnet_lite0 unet:efficientnet_lite0:16
                                              unet:efficientnet_lite0:s4 unet:16@128x128:16]

What a recipe buys in epochs before it is run: the step of speed.py's plain loop (Adam, cross-entropy, random
tensors in memory, no data pipeline) for each model, with the encoder fine-tuned, fine-tuned but for its first N
stages (as --frozen-stages N keeps them) and frozen (as --freeze-encoder-epochs trains it), in float32 and under
torch.autocast(bfloat16) (what `--precision bf16-mixed` runs on a CPU), and in each memory format of --formats
(channels_last: what `--channels-last on` trains with; the default, contiguous, is what a CPU run uses). A model
is `unet[:ENCODER][:BASE_CHANNELS][:sSTRIDE][@HxW[:BATCH]]`; `unet:16` is the classic U-Net with 16 base
channels, `:s4` a decoder that stops at stride 4 (-m decoder_stride=4).
All rows are timed interleaved (one step of each in turn, the order reversed every round), so other load on the
machine slows them alike; each number is the median step. Freed tensor memory is kept as masksmith's training keeps
it (masksmith.core.cpu_memory); MASKSMITH_SYSTEM_MALLOC=1 times the steps with glibc's malloc as it ships. bfloat16
pays where the CPU has AMX or AVX-512 BF16 (`lscpu | grep -o 'amx_bf16\\|avx512_bf16'`); elsewhere it can be
slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import training_step  # noqa: E402  (the plain loop's step, shared with speed.py)

from masksmith.cli.options import parse_size as parse_size_flag  # noqa: E402
from masksmith.core.cpu_memory import keep_freed_memory  # noqa: E402
from masksmith.data.sizes import as_size  # noqa: E402
from masksmith.models.encoders import ENCODERS  # noqa: E402
from masksmith.models.registry import build_model  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    """(height, width) of '288x192' or '256', as `masksmith train --size` reads it."""
    return as_size(parse_size_flag(text))


def parse_model(spec: str, size: tuple[int, int], batch: int) -> tuple[dict, tuple[int, int], int]:
    """`unet[:ENCODER][:BASE_CHANNELS][:sSTRIDE][@HxW[:BATCH]]` as (builder options, input size, batch)."""
    name_part, _, input_part = spec.partition("@")
    name, *options = name_part.split(":")
    built: dict = {}
    for option in options:
        if option.isdigit():
            built["base_channels"] = int(option)
        elif option in ENCODERS:
            built["encoder"] = option
        elif option[:1] == "s" and option[1:].isdigit():
            built["decoder_stride"] = int(option[1:])
        else:
            raise SystemExit(f"{spec}: {option!r} is neither a number of base channels, an encoder "
                             f"({', '.join(ENCODERS)}) nor a decoder stride (s2, s4)")
    if name != "unet":
        raise SystemExit(f"{spec}: only unet models (classic or over an encoder) are timed here")
    if input_part:
        size_text, _, batch_text = input_part.partition(":")
        size, batch = parse_size(size_text), int(batch_text or batch)
    return built, size, batch


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="288x192", help="HxW input of the models without their own @HxW")
    parser.add_argument("--classes", type=int, default=59)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per row")
    parser.add_argument("--formats", nargs="+", default=["contiguous"], choices=list(MEMORY_FORMATS),
                        help="memory formats of model and batch, each timed as its own row")
    parser.add_argument("--frozen-stages", nargs="*", type=int, default=[2],
                        help="also time the fine-tuned encoder with its first N stages frozen (--frozen-stages N)")
    parser.add_argument("--models", nargs="+",
                        default=["unet:efficientnet_lite0", "unet:efficientnet_lite0:16", "unet:efficientnet_lite0:s4",
                                 "unet:16@128x128:16"])
    args = parser.parse_args()
    keep_freed_memory()

    rows = []
    for spec in args.models:
        options, size, batch = parse_model(spec, parse_size(args.size), args.batch)
        # The encoder fine-tuned, fine-tuned but for its first N stages, frozen (the keys: the table's words).
        encoder_states = {"-": {}}
        if "encoder" in options:
            stages = {f"stages 1-{n} frozen": {"frozen_stages": n} for n in args.frozen_stages}
            encoder_states = {"fine-tuned": {}, **stages, "frozen": {"frozen": True}}
        for encoder, freezing in encoder_states.items():
            for memory in args.formats:
                model = build_model("unet", 3, args.classes, **options).to(memory_format=MEMORY_FORMATS[memory])
                images = torch.randn(batch, 3, *size).contiguous(memory_format=MEMORY_FORMATS[memory])
                masks = torch.randint(0, args.classes, (batch, *size))
                step = training_step(model, images, masks, **freezing)
                for precision in ("fp32", "bf16"):
                    rows.append(dict(model=spec, size=f"{size[0]}x{size[1]}", batch=batch, encoder=encoder,
                                     memory=memory, precision=precision, step=step, times=[]))

    def run(row: dict) -> float:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if row["precision"] == "bf16" else nullcontext()
        start = time.perf_counter()
        with context:
            row["step"]()
        return time.perf_counter() - start

    for row in rows:  # warm-up: first calls pick oneDNN kernels
        run(row)
    for round_index in range(args.rounds):
        for row in (rows if round_index % 2 == 0 else rows[::-1]):
            row["times"].append(run(row))

    print(f"threads: {torch.get_num_threads()}, classes: {args.classes}, freed memory kept: {keep_freed_memory()}")
    print("| model | input, batch | encoder | memory format | fp32 ms/img | bf16 ms/img | bf16 speed-up |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    for fp32, bf16 in zip(rows[0::2], rows[1::2]):
        fp32_ms = 1000 * statistics.median(fp32["times"]) / fp32["batch"]
        bf16_ms = 1000 * statistics.median(bf16["times"]) / bf16["batch"]
        print(f"| {fp32['model']} | {fp32['size']}, {fp32['batch']} | {fp32['encoder']} | {fp32['memory']} | "
              f"{fp32_ms:.0f} | {bf16_ms:.0f} | {fp32_ms / bf16_ms:.2f}x |")


if __name__ == "__main__":
    main()
