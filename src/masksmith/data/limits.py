"""The image-size limit: the one place that decides whether an image file is too large to decode.

Every masksmith command (check, train, predict, evaluate, convert) opens image files through
`open_image`, which reads the header size (PIL's Image.open decodes no pixels) and refuses the file
before a single pixel is decoded when it declares more pixels than the limit. The limit is
`set_max_image_pixels` / `image_pixel_limit` (TrainConfig.max_image_pixels), else the environment
variable MASKSMITH_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import IO, Iterator

from PIL import Image

from masksmith.errors import ConfigError, DataError

ENV_VAR = "MASKSMITH_MAX_IMAGE_PIXELS"
MAX_WORKERS = 256  # worker processes reading data: far beyond any machine, near enough to catch a typo
# PIL's own warning limit (1024**3 // 4 // 3, about 9459 x 9459): what `check` has always refused.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

_configured: int | None = None


class ImageTooLarge(DataError):
    """An image whose header declares more pixels than the limit; it was never decoded."""


def _positive(value: object, where: str) -> int:
    try:
        number = int(str(value).strip().replace("_", ""))
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{where}: expected a positive whole number of pixels, got {value!r}")
    return number


def max_image_pixels() -> int:
    """The pixel limit in force: the configured one, else $MASKSMITH_MAX_IMAGE_PIXELS, else the default."""
    if _configured is not None:
        return _configured
    text = os.environ.get(ENV_VAR)
    return _positive(text, ENV_VAR) if text else DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(limit: int | None) -> None:
    """Set the process-wide pixel limit (None: back to the environment variable or the default)."""
    global _configured
    _configured = None if limit is None else _positive(limit, "max_image_pixels")


@contextlib.contextmanager
def image_pixel_limit(limit: int | None) -> Iterator[None]:
    """Apply `limit` inside the block (None: leave the limit in force unchanged), then restore it."""
    global _configured
    previous = _configured
    if limit is not None:
        set_max_image_pixels(limit)
    try:
        yield
    finally:
        _configured = previous


def too_large_message(where: str, what: str, width: int | None, height: int | None, limit: int,
                      setting: str | None = None) -> str:
    """The one-line refusal; width/height None when PIL refused the header before giving a size.

    `setting`: what raises the limit where it was set (e.g. serve's --max-pixels); by default the
    process-wide setting.
    """
    size = f"{width}x{height} = {width * height} pixels" if width and height else "too many pixels"
    return (f"{where}: {what} refused as a possible decompression bomb: {size}, over the limit of {limit} "
            f"(raise it with {setting or f'max_image_pixels or {ENV_VAR}'})")


def check_pixels(where: str | os.PathLike, what: str, width: int, height: int, limit: int | None = None,
                 setting: str | None = None) -> None:
    """Raise ImageTooLarge when width x height exceeds the limit (default: the process-wide one)."""
    limit = max_image_pixels() if limit is None else limit
    if width * height > limit:
        raise ImageTooLarge(too_large_message(str(where), what, width, height, limit, setting))


@contextlib.contextmanager
def open_image(source: str | os.PathLike | IO[bytes], what: str = "image", where: str | None = None, *,
               limit: int | None = None, setting: str | None = None) -> Iterator[Image.Image]:
    """Image.open(source), refused with ImageTooLarge (naming `where`) before decoding when it is too large.

    `limit` and `setting`: a pixel limit other than the process-wide one, and what raises it (its
    flag), for callers with a limit of their own (`masksmith serve --max-pixels`).
    Other errors (missing, not an image) propagate as PIL raises them, for the caller to word.
    """
    where = where if where is not None else str(source) if isinstance(source, (str, os.PathLike)) else "image data"
    limit = max_image_pixels() if limit is None else limit
    # PIL refuses by its own limit inside Image.open, before masksmith sees a size; keep its limit at least
    # ours so masksmith's decides (PIL's MAX_IMAGE_PIXELS = None means the user switched PIL's off).
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            # PIL's warning comes at its limit, which is at least ours: the size check below refuses those.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(Path(source) if isinstance(source, os.PathLike) else source)
    except Image.DecompressionBombError:
        raise ImageTooLarge(too_large_message(where, what, None, None, limit, setting)) from None
    with image:
        width, height = image.size
        check_pixels(where, what, width, height, limit, setting)
        yield image
