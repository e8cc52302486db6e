"""A copy of the ISBI membrane slices moved onto their labels: does the labels' offset hold the pixel error up?

    python benchmarks/membrane_aligned.py OUT
    MASKSMITH_DATA=OUT benchmarks/run.sh membrane --name membrane-aligned

The labels sit about 0.6 pixel above the membranes they trace (benchmarks/membrane_offset.py), and flips,
which every microscopy preset uses, reverse that offset. This writes OUT/isbi2012-membrane/{train,test}: every
slice (training and test alike) resampled by the sub-pixel translation that centres the labels on the dark
lines, measured here by membrane_offset.label_offset, not typed in; the labels are copied unchanged, so a
model trained and scored on the copy is scored against the annotators' own masks. The input is
preprocessed, nothing else: the same recipe, split and held-out slices as `benchmarks/run.sh membrane`.
Bicubic resampling smooths a slice a little, which the comparison with the original data includes.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import MEMBRANE  # noqa: E402
from membrane_offset import label_offset  # noqa: E402

from masksmith.data.discover import discover  # noqa: E402
from masksmith.data.images import read_image  # noqa: E402


def moved(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """`image` (H x W uint8) sampled at (y + dy, x + dx): its content moves by (-dy, -dx), mirrored at the borders."""
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, shift, image.shape[::-1], flags=flags, borderMode=cv2.BORDER_REFLECT_101)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1]) / "isbi2012-membrane"
    if out.resolve().is_relative_to(MEMBRANE.resolve()) or MEMBRANE.resolve().is_relative_to(out.resolve()):
        raise SystemExit(f"{out}: refusing to write into or over the data it reads ({MEMBRANE})")
    _, (dy, dx) = label_offset(discover(MEMBRANE / "train")["all"])
    # The labels belong dy below the dark lines' centre: sample each slice dy further down, the lines move up.
    print(f"moving every slice by dy = {-dy:+.2f}, dx = {-dx:+.2f} px onto the labels")
    for split in ("train", "test"):
        for source in sorted((MEMBRANE / split / "images").iterdir()):
            target = out / split / "images" / f"{source.stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(moved(read_image(source, channels=1)[:, :, 0], dy, dx)).save(target)
        if (MEMBRANE / split / "masks").is_dir():
            shutil.copytree(MEMBRANE / split / "masks", out / split / "masks", dirs_exist_ok=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
