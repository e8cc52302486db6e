"""What a run trained with `--ema-decay` scores with its averaged and its live weights and BatchNorm statistics.

    python benchmarks/ema_statistics.py RUN DATA [--split val]

RUN/checkpoints/last.ckpt of an `--ema-decay` run holds the averaged weights as its state_dict and the live
(raw) ones as current_model_state. Each row writes a bundle (RUN/model.msb's metadata) with one combination:
the averaged or the raw parameters, each with the averaged or the raw BatchNorm running statistics, and scores
it with `masksmith.evaluate` on the run's recorded split. `--ema-decay` keeps the live BatchNorm statistics in
both states, so on its runs the statistics columns agree; a checkpoint whose averaged state also averaged the
statistics shows the difference they make (docs/results.md#what-did-not-help).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import masksmith
from masksmith.bundle import load_bundle, save_bundle
from masksmith.training.checkpoints import network_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from last_checkpoint import error_and_miou, run_checkpoint  # noqa: E402  (a sibling benchmark's helpers)

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    meta, _ = load_bundle(args.run / "model.msb")
    saved = run_checkpoint(args.run, "last")
    if "current_model_state" not in saved:
        raise SystemExit(f"{args.run}: last.ckpt holds no averaged weights (not an --ema-decay run)")
    averaged, raw = network_weights(saved["state_dict"]), network_weights(saved["current_model_state"])
    is_statistic = {k: k.rsplit(".", 1)[-1] in STATISTICS for k in raw}
    print(f"{args.run}, last checkpoint (epoch {saved['epoch']}), {args.split} split of {args.data}\n")
    print("| parameters | BatchNorm statistics | pixel error | mIoU |\n| --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for weights_name, weights in (("averaged", averaged), ("raw", raw)):
            for stats_name, stats in (("averaged", averaged), ("raw", raw)):
                state = {k: (stats[k] if is_statistic[k] else weights[k]) for k in raw}
                bundle = save_bundle(Path(folder) / "model.msb", state, meta)
                scores = masksmith.evaluate(bundle, args.data, split=args.split, out=Path(folder) / "evaluate",
                                            progress=False)
                print(f"| {weights_name} | {stats_name} | {error_and_miou(scores)} |")


if __name__ == "__main__":
    main()
