"""Check every pair before training starts, so a bad file fails in seconds, not mid-epoch."""

from __future__ import annotations

from PIL import Image
from tqdm.auto import tqdm

from masksmith.data.discover import Sample
from masksmith.data.masks import MaskEncoding, read_mask
from masksmith.errors import DataError

MAX_LISTED = 10


def image_size(path) -> tuple[int, int]:
    """(width, height) from the file header, after EXIF orientation; DataError if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception as error:
        raise DataError(f"{path}: cannot read image: {error}") from None
    # EXIF orientations 5-8 swap width and height when the image is turned upright.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def validate_samples(samples: list[Sample], encoding: MaskEncoding, num_classes: int, ignore_index: int = 255,
                     progress: bool = True) -> None:
    """Raise one DataError listing every unreadable file, size mismatch and out-of-range mask."""
    problems: list[str] = []
    for sample in tqdm(samples, desc="checking data", disable=not progress, leave=False):
        try:
            size = image_size(sample.image)
            if sample.mask is None:
                continue
            mask = read_mask(sample.mask, encoding, num_classes, ignore_index)
            if (mask.shape[1], mask.shape[0]) != size:
                problems.append(f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                                f"{sample.image.name} is {size[0]}x{size[1]}")
        except DataError as error:
            problems.append(str(error))
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in the data:\n  {listed}{more}")
