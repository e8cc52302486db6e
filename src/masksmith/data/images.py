"""Read image files (any format PIL reads, or .npy arrays) as HxWxC uint8, refusing bombs and truncation.

.npy files are read with `allow_pickle=False`, always: a pickled file is refused, never unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from masksmith.data.limits import open_image
from masksmith.errors import ConfigError, DataError

# PIL modes whose pixels are one intensity value; everything else is treated as colour.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
LOSSY_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: the multi-picture JPEG some cameras write
NPY_SUFFIX = ".npy"


def one_line(exc: BaseException) -> str:
    """An exception as one line of text."""
    return " ".join(str(exc).split()) or type(exc).__name__


class FileReadError(DataError):
    """A file that could not be read or decoded; `code` says why, for check's report (never parsed from text)."""

    def __init__(self, message: str, code: str = "unreadable"):
        super().__init__(message)
        self.code = code  # "empty", "truncated" or "unreadable"


def failure_code(exc: BaseException) -> str:
    """"truncated" when a decoder's exception says the data ends early, else "unreadable"."""
    # PIL and zlib say so only in their messages ("image file is truncated", "broken data stream"); this is
    # the one place that reads them, at the source, so masksmith's own messages are never parsed.
    text = str(exc).lower()
    return "truncated" if ("truncat" in text or "broken data stream" in text) else "unreadable"


def _failed(path: Path, what: str, exc: BaseException) -> FileReadError:
    """The error for a decoder's exception, coded by failure_code."""
    return FileReadError(f"{path}: cannot read {what}: {one_line(exc)}", failure_code(exc))


def _empty(path: Path, what: str) -> FileReadError:
    return FileReadError(f"{path}: cannot read {what}: file is empty (0 bytes)", "empty")


def open_decoded(path: Path, what: str, *, single_frame: bool = False) -> Image.Image:
    """Open and fully decode a file, so truncation shows up here and not deep inside training."""
    try:
        if path.stat().st_size == 0:
            raise _empty(path, what)
        with open_image(path, what) as image:  # refuses a bomb before decoding
            frames = getattr(image, "n_frames", 1)
            if single_frame and frames > 1:
                # A mask is one label image; silently taking page 1 of a stack would train on the wrong labels.
                raise DataError(f"{path}: cannot read {what}: file holds {frames} pages/frames; a mask is one image")
            image.load()
            # Masks are stored upright like their images; honour a rotation tag on either.
            ImageOps.exif_transpose(image, in_place=True)
        return image
    except (DataError, ConfigError):  # ConfigError: a bad pixel-limit setting
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read {what}: file not found") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        raise _failed(path, what, exc) from None


def load_npy(path: Path, what: str) -> np.ndarray:
    """np.load with allow_pickle=False, always: a mask file must never be able to run code when read."""
    try:
        if path.stat().st_size == 0:
            raise _empty(path, what)
        loaded = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read {what}: file not found") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(
                f"{path}: cannot read {what}: the .npy holds pickled Python objects, which masksmith never loads "
                "(unpickling can run code); save a plain integer array"
            ) from None
        raise _failed(path, what, exc) from None
    except Exception as exc:  # truncated files raise EOFError, OSError, ...
        raise _failed(path, what, exc) from None
    if not isinstance(loaded, np.ndarray):
        getattr(loaded, "close", lambda: None)()
        raise DataError(f"{path}: cannot read {what}: an .npz archive, not a single .npy array")
    return loaded


def _wide_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit / float intensities to 0..255 by the image's maximum."""
    array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    array = np.clip(array, 0, None)
    peak = array.max()
    if peak > 0:
        array = array * (255.0 / peak)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _to_gray(image: Image.Image) -> np.ndarray:
    """HxW uint8 intensities from any PIL mode."""
    if image.mode in _WIDE_MODES:
        return _wide_to_uint8(np.asarray(image))
    if image.mode in ("LA", "La"):
        return np.asarray(image)[..., 0].copy()
    if image.mode != "L":
        image = image.convert("RGB").convert("L")
    return np.asarray(image)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 from any PIL mode; alpha is dropped."""
    if image.mode in GRAYSCALE_MODES:
        gray = _to_gray(image)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")  # P, RGBA, CMYK, YCbCr, ...: PIL drops alpha and converts colour spaces
    return np.asarray(image)


def array_image(array: np.ndarray, where: str) -> Image.Image:
    """An image array (HxW, HxWx1, HxWx3 or HxWx4; any numeric dtype) as a PIL image, as an .npy file is read.

    Wide dtypes (16-bit, 32-bit, float) are scaled by the image's maximum, like a 16-bit PNG, so an array
    gives the same pixels in memory as from a file. `where` names the array in the DataError.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise DataError(f"{where}: cannot read image: array shape {array.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind not in "uif":
        raise DataError(f"{where}: cannot read image: {array.dtype} array of shape {array.shape}; expected numbers")
    elif array.dtype != np.uint8:
        array = _wide_to_uint8(array)  # like a 16-bit PNG: scaled by the image's maximum
    if array.ndim == 3:
        array = array[:, :, :3]  # alpha dropped; a 2-D array keeps every column (a[..., :3] would cut it to 3)
    return Image.fromarray(np.ascontiguousarray(array))


def _npy_image(path: Path) -> Image.Image:
    """An .npy array as a PIL image (array_image's rules)."""
    return array_image(load_npy(path, "image"), str(path))


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image (or .npy array) as HxWxC uint8 (C = channels, or 1 for grayscale files and 3 otherwise)."""
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels}")
    image = _npy_image(path) if path.suffix.lower() == NPY_SUFFIX else open_decoded(path, "image")
    return image_to_array(image, channels)


def image_to_array(image: Image.Image, channels: int | None = None) -> np.ndarray:
    """A decoded PIL image as read_image returns it: HxWxC uint8 (C = channels, or 1 for grayscale, else 3)."""
    # Shared with `masksmith serve`, whose uploads must become the very arrays `predict` reads from files.
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels}")
    if channels is None:
        channels = 1 if image.mode in GRAYSCALE_MODES else 3
    array = _to_gray(image)[:, :, None] if channels == 1 else _to_rgb(image)
    return np.ascontiguousarray(array, dtype=np.uint8)


def image_channels(path: str | Path) -> int:
    """1 if the file is stored as grayscale, else 3; reads only the header."""
    path = Path(path)
    if path.suffix.lower() == NPY_SUFFIX:
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except FileNotFoundError:
            raise DataError(f"{path}: cannot read image: file not found") from None
        except Exception as exc:
            raise DataError(f"{path}: cannot read image: {one_line(exc)}") from None
        return 3 if len(shape) == 3 and shape[2] in (3, 4) else 1
    try:
        with Image.open(path) as image:
            mode = image.mode
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image: file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read image: {one_line(exc)}") from None
    return 1 if mode in GRAYSCALE_MODES else 3

