"""Check every pair before training starts, so a bad file fails in seconds, not mid-epoch.

Every image and mask is fully decoded here (one at a time), so a truncated file is found before the
first step, and the pixel limit (masksmith.data.limits) refuses a decompression bomb before decoding.
Pairs that a check of the run already read cleanly, decoded the same way, are not read again.
`size_mismatch` is the one rule (and message) for a mask whose size is not its image's: check, this
validation and the training dataset all use it.
"""

from __future__ import annotations

import warnings

from tqdm.auto import tqdm

from collections.abc import Collection

from masksmith.data.discover import Sample
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MaskEncoding
from masksmith.data.images import read_image
from masksmith.data.limits import open_image
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


def size_mismatch(sample: Sample, image_size: tuple[int, int], mask_size: tuple[int, int]) -> str | None:
    """Why a pair's mask does not fit its image (sizes as (width, height)), or None when the sizes agree."""
    if tuple(image_size) == tuple(mask_size):
        return None
    return (f"{sample.mask}: mask is {mask_size[0]}x{mask_size[1]} but image {sample.image.name} is "
            f"{image_size[0]}x{image_size[1]}")


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
    return size_mismatch(sample, size, (mask.shape[1], mask.shape[0]))


def listing(problems: list[str]) -> str:
    """Problems one per line, the first MAX_LISTED of them."""
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"  {listed}{more}"


def validate_samples(samples: list[Sample], encoding: MaskEncoding, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX,
                     progress: bool = True, skip_invalid: bool = False,
                     read_cleanly: Collection[Sample] = ()) -> list[Sample]:
    """The usable pairs; a DataError listing every bad pair, or with skip_invalid a warning that lists them.

    `read_cleanly`: pairs already fully read and decoded with this encoding, class count and ignore value
    without a problem (`CheckReport.pairs_read_cleanly`); they are kept without being read again."""
    read_cleanly = set(read_cleanly)
    to_read = [s for s in samples if s not in read_cleanly]
    problems: dict[Sample, str] = {}
    for sample in tqdm(to_read, desc="checking data", disable=not progress or not to_read, leave=False):
        problem = sample_problem(sample, encoding, num_classes, ignore_index)
        if problem is not None:
            problems[sample] = problem
    good = [s for s in samples if s not in problems]  # in the given order
    if problems and not skip_invalid:
        raise DataError(f"{len(problems)} problem(s) in the data (skip_invalid leaves them out):\n"
                        f"{listing(list(problems.values()))}")
    if problems:
        warnings.warn(f"skipping {len(problems)} bad pair(s):\n{listing(list(problems.values()))}", stacklevel=2)
    return good
