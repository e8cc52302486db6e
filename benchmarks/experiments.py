"""Accuracy experiments on real data: train, evaluate, predict, and print one line of numbers each.

    benchmarks/run.sh EXPERIMENT [--minutes M] [--out runs/bench] [--name NAME] [-- TRAIN OPTIONS]
    python benchmarks/experiments.py EXPERIMENT [...]           (the same, in the current environment)

Options after `--` go to `masksmith train` after the recipe's own and override them (a variant of a recipe,
for ablations: `benchmarks/run.sh clothing-unet --name clothing-unet-128 -- --size 128`); --name is its folder.

Experiments (the data is read from ../shared/data, or from $MASKSMITH_DATA):
    clothing-tutorial  59 classes, the tutorials' setting: U-Net at 128x128, 80/20 seeded split, cross-entropy,
                       Adam at a constant rate, flips/rotation/crop/brightness/gamma/hue, early stopping
    clothing-unet      masksmith's recipe: dice+ce, AdamW with a cosine schedule, at 160x160 (batch 8); the best
                       result of docs/results.md#clothing-from-scratch is this recipe at 128x128:
                       add `-- --size 128 --batch-size 16`
    clothing-smp       the same recipe and time budget on smp.Unet with a ResNet-18 encoder from scratch
                       (needs the smp extra: run it with .venv-smp, see test-smp.sh)
    clothing-lite0     masksmith's recipe on an ImageNet-pretrained EfficientNet-Lite0 U-Net at 288x192 (aspect
                       kept), frozen for the first epoch, then fine-tuned at lr/10
    membrane           ISBI 2012: 24/6 seeded split, 256 crops at full resolution, whole-image prediction
                       at 512x512 and tiled prediction of the unlabelled test slices
    membrane-lite0     the same on the pretrained EfficientNet-Lite0 U-Net (frozen for 3 epochs)
    membrane-auto      the default command with the budget: `masksmith train DATA --foreground 0 --max-time 25`
    clothing-auto      the same on the clothing photos: `masksmith train DATA --classes DATA/classes.txt --max-time 40`
                       (the default split is the recipes' seeded 80/20 one)
    membrane-cv        5-fold cross-validation of the `membrane` recipe on its 24 training slices (--minutes per
                       fold, default 4), then the fold ensemble against each single fold model on the recipe's 6
                       held-out validation slices (a test split here, never seen by any fold)
    labelme            labelme-examples: convert → check → train → predict, then the loop: predict as Labelme
                       files → convert them back (round-trip IoU per class) → train on them (the path, not accuracy)

Each writes OUT/NAME/{run,evaluate,predictions}, a summary.json, and prints one line with the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MASKSMITH_DATA", REPO.parent / "shared" / "data"))
CLOTHING = DATA / "clothing-co-parsing"
MEMBRANE = DATA / "isbi2012-membrane"
LABELME = DATA / "labelme-examples"

# The clothing recipes share the seeded 80/20 split and the `upright` augmentation (left-right flips,
# small rotation/scale/shift crops, brightness, contrast, gamma, hue: the tutorial's list, and no
# upside-down people). Each sets every option (--no-auto), so the recipe is all here.
CLOTHING_COMMON = ["--no-auto", "--classes", str(CLOTHING / "classes.txt"), "--val-fraction", "0.2", "--seed", "42",
                   "--augment", "upright", "--resize", "resize", "--monitor", "val_miou"]
# masksmith's recipe: dice+ce, AdamW with a cosine schedule; the time budget ends training long before 100
# epochs, and the schedule anneals over the epochs that fit in it. At 160x160 it is the pair for the smp
# comparison; at 128x128 with batch 16 (more epochs in the budget) it scores best.
MASKSMITH_RECIPE = ["--size", "160", "--loss", "dice+ce", "--optimizer", "adamw", "--lr", "2e-3",
                    "--scheduler", "cosine", "--batch-size", "8", "--epochs", "100", "--early-stopping", "0"]
RECIPES: dict[str, dict] = {
    "clothing-tutorial": dict(data=CLOTHING, minutes=34, args=[
        "--model", "unet", "-m", "base_channels=16", "--size", "128", "--loss", "ce", "--optimizer", "adam",
        "--lr", "1e-3", "--scheduler", "none", "--batch-size", "16", "--epochs", "200", "--early-stopping", "10",
        *CLOTHING_COMMON]),
    "clothing-unet": dict(data=CLOTHING, minutes=34, args=[
        "--model", "unet", "-m", "base_channels=16", *MASKSMITH_RECIPE, *CLOTHING_COMMON]),
    "clothing-smp": dict(data=CLOTHING, minutes=34, args=[
        "--model", "smp.Unet", "--encoder", "resnet18", *MASKSMITH_RECIPE, *CLOTHING_COMMON]),
    # ImageNet-pretrained EfficientNet-Lite0 under the U-Net decoder (the pretrained extra's weights), frozen for
    # the first epoch(s), then fine-tuned at lr/10; inputs keep the photos' 2:3 aspect ratio.
    "clothing-lite0": dict(data=CLOTHING, minutes=36, args=[
        "--model", "unet", "--encoder", "efficientnet_lite0", "--weights", "imagenet", "--freeze-encoder-epochs", "1",
        *MASKSMITH_RECIPE, "--size", "288x192", *CLOTHING_COMMON]),
    "membrane-lite0": dict(data=MEMBRANE / "train", minutes=25, args=[
        "--no-auto", "--foreground", "0", "--model", "unet", "--encoder", "efficientnet_lite0", "--weights", "imagenet",
        "--freeze-encoder-epochs", "3", "--size", "256", "--resize", "random_crop", "--loss", "dice+ce",
        "--optimizer", "adamw", "--lr", "2e-3", "--scheduler", "cosine", "--batch-size", "4", "--epochs", "300",
        "--val-fraction", "0.2", "--seed", "42", "--augment", "default", "--early-stopping", "0",
        "--monitor", "val_dice"]),
    # The default command with a time budget: every option not given comes from the plan (pretrained encoder,
    # input size and batch fitted to the budget by timed steps).
    "membrane-auto": dict(data=MEMBRANE / "train", minutes=25, args=["--foreground", "0", "--monitor", "val_dice"]),
    "clothing-auto": dict(data=CLOTHING, minutes=40, args=["--classes", str(CLOTHING / "classes.txt")]),
    "membrane": dict(data=MEMBRANE / "train", minutes=25, args=[
        "--no-auto", "--foreground", "0", "--model", "unet", "-m", "base_channels=16", "--size", "256",
        "--resize", "random_crop", "--loss", "dice+ce", "--optimizer", "adamw", "--lr", "2e-3",
        "--scheduler", "cosine", "--batch-size", "4", "--epochs", "300", "--val-fraction", "0.2",
        "--seed", "42", "--augment", "default", "--early-stopping", "0", "--monitor", "val_dice"]),
}


def masksmith(*args: str) -> None:
    """Run the masksmith CLI of this interpreter's environment; stop on failure."""
    command = [str(Path(sys.executable).parent / "masksmith"), *args]
    print("$ masksmith " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def present_class_scores(metrics: dict) -> dict:
    """mIoU over the classes present in the truth of the split (the tutorials' and papers' convention)."""
    matrix = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    tp, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    present = support > 0
    iou = tp[present] / (support + predicted - tp)[present]
    return {"classes_present": int(present.sum()), "miou_present": float(iou.mean()),
            "pixel_error": 1.0 - float(metrics["pixel_accuracy"])}


def train_evaluate_predict(name: str, folder: Path, minutes: float, train_args: list[str]) -> dict:
    recipe = RECIPES[name]
    shutil.rmtree(folder, ignore_errors=True)
    masksmith("train", str(recipe["data"]), *recipe["args"], "--max-time", str(minutes), "--quiet",
              "--out", str(folder / "run"), *train_args)
    bundle = str(folder / "run" / "model.msb")
    masksmith("evaluate", bundle, str(recipe["data"]), "--out", str(folder / "evaluate"))
    if name.startswith("membrane"):
        # The unlabelled test slices, tiled (256 tiles, 64 px overlap, Gaussian blending), with overlays.
        masksmith("predict", bundle, str(MEMBRANE / "test" / "images"), "--out", str(folder / "predictions"),
                  "--tile", "256", "--overlap", "64", "--overlay", "--quiet")
    metrics = json.loads((folder / "evaluate" / "metrics.json").read_text())
    history = [line.split(",") for line in (folder / "run" / "metrics.csv").read_text().splitlines()]
    return {"epochs": len(history) - 1, **present_class_scores(metrics),
            **{key: metrics.get(key) for key in ("pixel_accuracy", "miou", "mean_dice", "miou_no_background",
                                                 "mean_dice_no_background")},
            "foreground_dice": (metrics["per_class"][1]["dice"] if len(metrics["per_class"]) == 2 else None),
            "foreground_iou": (metrics["per_class"][1]["iou"] if len(metrics["per_class"]) == 2 else None)}


def held_out_layout(folder: Path) -> Path:
    """FOLDER/data: train/ (24 slices) and test/ (the `membrane` recipe's 6 seeded validation slices), as links."""
    from masksmith.data.discover import discover, split_samples

    pool = discover(MEMBRANE / "train")["all"]
    train, test = split_samples(pool, 0.2, 42)  # the split the `membrane` recipe validates on
    for split, samples in (("train", train), ("test", test)):
        for sample in samples:
            for role, source in (("images", sample.image), ("masks", sample.mask)):
                target = folder / "data" / split / role / source.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source.resolve())
    return folder / "data"


def test_scores(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"foreground_dice": metrics["per_class"][1]["dice"], "foreground_iou": metrics["per_class"][1]["iou"],
            "pixel_error": 1.0 - metrics["pixel_accuracy"], "miou": metrics["miou"]}


def membrane_cross_validation(folder: Path, minutes: float, train_args: list[str]) -> dict:
    """5-fold CV of the `membrane` recipe on 24 slices; the ensemble and each fold model on the 6 held out."""
    shutil.rmtree(folder, ignore_errors=True)
    data = held_out_layout(folder)
    recipe = [arg for arg in RECIPES["membrane"]["args"] if arg not in ("--val-fraction", "0.2")]
    masksmith("train", str(data), *recipe, "--folds", "5", "--max-time", str(minutes), "--quiet",
              "--out", str(folder / "cv"), *train_args)
    masksmith("evaluate", str(folder / "cv"), str(data), "--split", "test", "--out", str(folder / "test-ensemble"),
              "--quiet")
    singles = []
    for fold in range(5):
        masksmith("evaluate", str(folder / "cv" / f"fold_{fold}" / "model.msb"), str(data), "--split", "test",
                  "--out", str(folder / f"test-fold_{fold}"), "--quiet")
        singles.append(test_scores(folder / f"test-fold_{fold}"))
    summary = json.loads((folder / "cv" / "cv_summary.json").read_text())
    ensemble = test_scores(folder / "test-ensemble")
    result = {"minutes_per_fold": minutes,
              "cv_foreground_dice_mean": summary["per_class"][1]["dice"]["mean"],
              "cv_foreground_dice_std": summary["per_class"][1]["dice"]["std"],
              "cv_foreground_dice_pooled": summary["per_class"][1]["dice"]["pooled"],
              **{f"ensemble_{key}": value for key, value in ensemble.items()},
              **{f"fold0_{key}": value for key, value in singles[0].items()},
              "single_foreground_dice_mean": float(np.mean([s["foreground_dice"] for s in singles]))}
    (folder / "test_scores.json").write_text(json.dumps({"ensemble": ensemble, "folds": singles}, indent=1))
    return result


def labelme_path(folder: Path) -> dict:
    """convert → check → train → predict on the Labelme examples (3 images: the path, not accuracy)."""
    shutil.rmtree(folder, ignore_errors=True)
    source = LABELME / "semantic_segmentation"
    masksmith("convert", "labelme", str(source / "data_annotated"), str(folder / "voc"),
              "--labels", str(source / "labels.txt"), "--quiet")
    masksmith("check", str(folder / "voc"), "--out", str(folder / "check"))
    masksmith("train", str(folder / "voc"), "--size", "128", "--epochs", "5", "--val-fraction", "0.34",
              "--early-stopping", "0", "--quiet", "--out", str(folder / "run"))
    masksmith("predict", str(folder / "run" / "model.msb"), str(folder / "voc" / "JPEGImages"),
              "--out", str(folder / "predictions"), "--overlay", "--quiet")
    written = sorted(p.name for p in (folder / "predictions").glob("*.png"))
    # The loop: predictions as Labelme files (what a person would open and correct), read back, trained on.
    masksmith("predict", str(folder / "run" / "model.msb"), str(folder / "voc" / "JPEGImages"),
              "--out", str(folder / "pre-annotated"), "--format", "labelme", "--rank", "--quiet")
    masksmith("convert", "labelme", str(folder / "pre-annotated"), str(folder / "voc-round2"),
              "--labels", str(folder / "pre-annotated" / "labels.txt"), "--no-viz", "--quiet")
    masksmith("train", str(folder / "voc-round2"), "--size", "128", "--epochs", "5", "--val-fraction", "0.34",
              "--early-stopping", "0", "--quiet", "--out", str(folder / "run-round2"))
    round_trip = []
    for predicted in sorted((folder / "pre-annotated").glob("*.png")):
        mask = np.asarray(Image.open(predicted))
        back = np.asarray(Image.open(folder / "voc-round2" / "SegmentationClass" / predicted.name))
        for cls in np.unique(mask).tolist():
            union = np.logical_or(mask == cls, back == cls).sum()
            round_trip.append(float(np.logical_and(mask == cls, back == cls).sum() / union))
    return {"masks_written": len(written), "labelme_files": len(list((folder / "pre-annotated").glob("*.json"))),
            "round_trip_min_class_iou": min(round_trip),
            "retrained": (folder / "run-round2" / "model.msb").is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=[*RECIPES, "membrane-cv", "labelme"])
    parser.add_argument("--minutes", type=float, help="training time budget [default: the experiment's]")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--name", help="folder under --out and name in the RESULT line [default: EXPERIMENT]")
    argv = sys.argv[1:]
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:len(argv) - len(train_args) - (1 if "--" in argv else 0)])
    if train_args and args.experiment == "labelme":
        parser.error("options for masksmith train (after --) are for the training experiments")
    name = args.name or args.experiment
    start = time.perf_counter()
    if args.experiment == "labelme":
        result = labelme_path(args.out / name)
    elif args.experiment == "membrane-cv":
        result = membrane_cross_validation(args.out / name, args.minutes or 4, train_args)
    else:
        minutes = args.minutes or RECIPES[args.experiment]["minutes"]
        result = {"budget_minutes": minutes,
                  **train_evaluate_predict(args.experiment, args.out / name, minutes, train_args)}
    result = {"experiment": name, "wall_minutes": round((time.perf_counter() - start) / 60, 1),
              "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)), **result}
    if train_args:
        result["train_options"] = " ".join(train_args)
    (args.out / name / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
