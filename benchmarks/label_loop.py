"""One round of the label loop on real data: do corrections on the 20 images the "label next" ranking puts first
teach the model more than corrections on 20 images picked at random, at the same training budget?

    benchmarks/run.sh label-loop [--minutes M] [--start N] [--pool N] [--picked N] [--out runs/bench] [--dry]
    python benchmarks/label_loop.py [...]                          (the same, in the current environment)

On the clothing photos (59 classes; ../shared/data, or $MASKSMITH_DATA), seeded and disjoint:
  start  --start images with masks (a fifth of them validates), the labels a person has so far;
  pool   --pool images whose masks the loop pretends not to have (the images still to label);
  test   --test images with masks, held out: every model is scored on them (`masksmith evaluate --split test`).
1. `masksmith train START --max-time M` gives the model of round 0 ("before").
2. `masksmith predict MODEL POOL --rank` ranks the pool (ranking.csv, most uncertain first).
3. The --picked top-ranked images get their true masks (a person's corrections, made perfect), and so do
   --picked images drawn at random from the pool (seeded); each set joins the start images' training split.
4. Each is trained with `--init MODEL --max-time M` (fine-tuning from round 0, the page's retrain command), and
   so is the start set alone (the same extra budget with no new labels: what more training alone gives).
5. The table: mIoU (over the classes present in the test masks), pixel accuracy and the mean foreground Dice
   of every model, side by side. Each run writes OUT/label-loop/summary.json.

--dry runs the loop on 12 start, 12 pool and 8 test images, 4 picked, 0.2 minutes a training: the path, not the
numbers.
The numbers are one seed of one round; a different --seed moves them (compare within one run only).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import CLOTHING, masksmith, present_class_scores

# The clothing-unet recipe at 128x128 (docs/results.md's best small U-Net), with every option set.
RECIPE = ["--no-auto", "--model", "unet", "-m", "base_channels=16", "--size", "128", "--resize", "resize",
          "--loss", "dice+ce", "--optimizer", "adamw", "--lr", "2e-3", "--scheduler", "cosine", "--batch-size", "16",
          "--epochs", "100", "--early-stopping", "0", "--augment", "upright", "--monitor", "val_miou"]
# Fine-tuning keeps the bundle's network and input; the rest of the recipe is the same.
FINE_TUNE = ["--no-auto", "--loss", "dice+ce", "--optimizer", "adamw", "--lr", "1e-3", "--scheduler", "cosine",
             "--batch-size", "16", "--epochs", "100", "--early-stopping", "0", "--augment", "upright",
             "--monitor", "val_miou"]


def link_pairs(names: list[str], split: Path, with_masks: bool = True) -> None:
    """split/images (and split/masks) holding links to the clothing files of `names` (the data is read-only)."""
    for name in names:
        roles = [("images", CLOTHING / "images" / f"{name}.jpg")]
        if with_masks:
            roles.append(("masks", CLOTHING / "masks" / f"{name}.png"))
        for role, source in roles:
            target = split / role / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())


def dataset(folder: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    """folder/{train,val,test}/{images,masks} and classes.txt: a dataset in the folder layout masksmith reads."""
    for split, names in (("train", train), ("val", val), ("test", test)):
        link_pairs(names, folder / split)
    shutil.copy(CLOTHING / "classes.txt", folder / "classes.txt")
    return folder


def scores(bundle: Path, data: Path, out: Path) -> dict:
    """The model's scores on the held-out test split, and the epochs its training fitted in the budget (a time
    budget on a shared machine gives the runs different epochs: the table shows them)."""
    masksmith("evaluate", str(bundle), str(data), "--split", "test", "--out", str(out), "--quiet")
    metrics = json.loads((out / "metrics.json").read_text())
    present = present_class_scores(metrics)
    epochs = len((bundle.parent / "metrics.csv").read_text().splitlines()) - 1
    return {"miou_present": present["miou_present"], "pixel_accuracy": metrics["pixel_accuracy"],
            "mean_dice_no_background": metrics["mean_dice_no_background"], "epochs": epochs}


def ranked_pool(bundle: Path, pool: Path, out: Path) -> list[str]:
    """The pool's image names, most uncertain first, as `masksmith predict --rank` ranks them."""
    masksmith("predict", str(bundle), str(pool / "images"), "--out", str(out), "--rank", "--quiet")
    with (out / "ranking.csv").open(newline="") as handle:
        return [Path(row["image"]).stem for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="budget of each training [default: 3]")
    parser.add_argument("--start", type=int, default=60, help="images labelled at the start [default: 60]")
    parser.add_argument("--pool", type=int, default=200, help="images still to label [default: 200]")
    parser.add_argument("--test", type=int, default=100, help="held-out test images [default: 100]")
    parser.add_argument("--picked", type=int, default=20, help="images corrected in the round [default: 20]")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "runs" / "bench")
    parser.add_argument("--dry", action="store_true", help="a tiny run: the path, not the numbers")
    args = parser.parse_args()
    if args.dry:
        args.minutes, args.start, args.pool, args.test, args.picked = 0.2, 12, 12, 8, 4
    if args.picked > args.pool:
        parser.error("--picked is at most --pool")
    started = time.perf_counter()
    folder = args.out / ("label-loop-dry" if args.dry else "label-loop")
    shutil.rmtree(folder, ignore_errors=True)

    names = sorted(path.stem for path in (CLOTHING / "masks").glob("*.png"))
    rng = random.Random(args.seed)
    rng.shuffle(names)
    start, pool, test = (names[:args.start], names[args.start:args.start + args.pool],
                         names[args.start + args.pool:args.start + args.pool + args.test])
    val_count = max(1, args.start // 5)
    val, train = start[:val_count], start[val_count:]
    base = dataset(folder / "data-start", train, val, test)
    link_pairs(pool, folder / "pool", with_masks=False)
    budget = ["--max-time", str(args.minutes), "--seed", str(args.seed), "--quiet",
              "--classes", str(base / "classes.txt")]

    masksmith("train", str(base), *RECIPE, *budget, "--out", str(folder / "round0"))
    round0 = folder / "round0" / "model.msb"
    ranking = ranked_pool(round0, folder / "pool", folder / "ranked")
    picked = {"top-ranked": ranking[:args.picked], "random": random.Random(args.seed + 1).sample(pool, args.picked),
              "none": []}
    results = {"before": scores(round0, base, folder / "evaluate-round0")}
    for label, extra in picked.items():
        data = dataset(folder / f"data-{label}", train + extra, val, test)
        run = folder / f"round1-{label}"
        masksmith("train", str(data), *FINE_TUNE, *budget, "--init", str(round0), "--out", str(run))
        results[f"+{args.picked} {label}" if extra else "+0 (training only)"] = scores(
            run / "model.msb", data, folder / f"evaluate-{label}")

    rows = [("mIoU (present classes)", "miou_present"), ("pixel accuracy", "pixel_accuracy"),
            ("mean Dice, no background", "mean_dice_no_background")]
    columns = list(results)
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':<{width}}  " + "  ".join(f"{c:>18}" for c in columns)]
    lines += [f"{label:<{width}}  " + "  ".join(f"{results[c][key]:>18.4f}" for c in columns) for label, key in rows]
    lines.append(f"{'epochs in the budget':<{width}}  " + "  ".join(f"{results[c]['epochs']:>18}" for c in columns))
    overlap = len(set(picked["top-ranked"]) & set(picked["random"]))
    summary = {"minutes_per_training": args.minutes, "start_train": len(train), "val": len(val), "pool": len(pool),
               "test": len(test), "picked": args.picked, "seed": args.seed, "picked_in_both": overlap,
               "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
               "wall_minutes": round((time.perf_counter() - started) / 60, 1), "scores": results,
               "top_ranked": picked["top-ranked"], "random": picked["random"]}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"label loop on clothing: {len(train)} training + {len(val)} validation images at the start, a pool of "
          f"{len(pool)}, {len(test)} held-out test images; {args.minutes:g} min per training "
          f"({summary['threads']} thread(s)); {overlap} image(s) in both picks; {summary['wall_minutes']} min in all")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
