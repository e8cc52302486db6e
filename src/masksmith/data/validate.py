"""Check every pair before training starts, so a bad file fails in seconds, not mid-epoch.

Every image and mask is fully decoded here (one at a time), so a truncated file is found before the
first step, and the pixel limit (masksmith.data.limits) refuses a decompression bomb before decoding.
"""

from __future__ import annotations

import warnings

from tqdm.auto import tqdm

from masksmith.data.discover import Sample
from masksmith.data.limits import open_image
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MaskEncoding
from masksmith.data.images import read_image
from masksmith.data.masks import read_mask
from masksmith.errors import DataError

MAX_LISTED = 10


def image_size(path) -> tuple[int, int]:
    """(width, height) from the file header, after EXIF orientation; DataError if unreadable."""
    try:
        with open_image(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{path}: cannot read image: {error}") from None
    # EXIF orientations 5-8 swap width and height when the image is turned upright.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def sample_problem(sample: Sample, encoding: MaskEncoding, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX) -> str | None:
    """What is wrong with one pair (unreadable, size mismatch, mask values outside the classes), or None."""
    try:
        # A full decode, not just the header: a truncated file must fail here, not in the middle of an epoch.
        image = read_image(sample.image)
        size = (image.shape[1], image.shape[0])
        del image  # one decoded image at a time
        if sample.mask is None:
            return None
        mask = read_mask(sample.mask, encoding, num_classes, ignore_index)
    except DataError as error:
        return str(error)
    if (mask.shape[1], mask.shape[0]) != size:
        return (f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                f"{sample.image.name} is {size[0]}x{size[1]}")
    return None


def listing(problems: list[str]) -> str:
    """Problems one per line, the first MAX_LISTED of them."""
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"  {listed}{more}"


def validate_samples(samples: list[Sample], encoding: MaskEncoding, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX,
                     progress: bool = True, skip_invalid: bool = False) -> list[Sample]:
    """The usable pairs; a DataError listing every bad pair, or with skip_invalid a warning that lists them."""
    good: list[Sample] = []
    problems: list[str] = []
    for sample in tqdm(samples, desc="checking data", disable=not progress, leave=False):
        problem = sample_problem(sample, encoding, num_classes, ignore_index)
        if problem is None:
            good.append(sample)
        else:
            problems.append(problem)
    if problems and not skip_invalid:
        raise DataError(f"{len(problems)} problem(s) in the data (skip_invalid leaves them out):\n{listing(problems)}")
    if problems:
        warnings.warn(f"skipping {len(problems)} bad pair(s):\n{listing(problems)}", stacklevel=2)
    return good
