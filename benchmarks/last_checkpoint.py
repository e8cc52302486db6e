"""Whole-image scores of runs' kept (best) checkpoints against their last ones, alone and as one ensemble.

    python benchmarks/last_checkpoint.py RUN [RUN ...] --data DATA [--split val] [--tta]

A run's bundle (RUN/model.msb) holds the epoch that scored best on the training-time validation; for runs
on random crops that validation scores centre crops at the training size, while `masksmith evaluate` scores
whole images. This scores each run's bundle and the network weights of RUN/checkpoints/last.ckpt (written
into a bundle with the same metadata), then the runs' bundles and their last checkpoints as two ensembles,
on the run's recorded split: does keeping the best crop-validation epoch cost or gain on whole images?
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import masksmith
from masksmith.bundle import load_bundle, save_bundle
from masksmith.training.checkpoints import load_checkpoint, network_weights


def run_checkpoint(run: Path, name: str) -> dict:
    """RUN/checkpoints/NAME.ckpt (best or last), read weights-only from inside the run's checkpoint folder."""
    return load_checkpoint(run / "checkpoints" / f"{name}.ckpt", run / "checkpoints")


def error_and_miou(scores: dict) -> str:
    """Pixel error and mIoU of `masksmith.evaluate`'s scores, as two table cells."""
    return f"{1 - scores['pixel_accuracy']:.4f} | {scores['miou']:.4f}"


def last_checkpoint_bundle(run: Path, folder: Path) -> tuple[Path, int]:
    """RUN/checkpoints/last.ckpt's network weights as a bundle in `folder`, with the epoch it ended."""
    meta, _ = load_bundle(run / "model.msb")
    saved = run_checkpoint(run, "last")
    folder.mkdir(parents=True)
    return save_bundle(folder / "model.msb", network_weights(saved["state_dict"]), meta), saved["epoch"]


def best_epoch(run: Path) -> int:
    """The epoch best.ckpt (the bundle's weights) was written at."""
    return run_checkpoint(run, "best")["epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--tta", action="store_true", help="average each image's flips (as evaluate --tta)")
    args = parser.parse_args()

    def score(bundles: list[Path], out: Path) -> str:
        return error_and_miou(masksmith.evaluate(bundles, args.data, split=args.split, out=out, progress=False,
                                                 tta=args.tta))

    print(f"{args.split} split of {args.data}, tta: {args.tta}\n")
    print("| run | kept epoch | kept: pixel error | kept: mIoU | last epoch | last: pixel error | last: mIoU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        kept_bundles, last_bundles = [], []
        for index, run in enumerate(args.runs):
            last, last_epoch = last_checkpoint_bundle(run, work / f"last{index}")
            kept_bundles.append(run / "model.msb")
            last_bundles.append(last)
            print(f"| {run} | {best_epoch(run)} | {score([run / 'model.msb'], work / f'kept{index}-scores')} | "
                  f"{last_epoch} | {score([last], work / f'last{index}-scores')} |")
        if len(args.runs) > 1:
            print(f"| the runs' ensemble | | {score(kept_bundles, work / 'kept-scores')} | | "
                  f"{score(last_bundles, work / 'last-scores')} |")


if __name__ == "__main__":
    main()
