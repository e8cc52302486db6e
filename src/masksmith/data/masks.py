"""Read mask files into 2-D class-index arrays, and encode class indices back in the dataset's own kind.

Conventions:
- Palette PNGs are read by their indices (VOC), GIFs by their palette colors: GIF writers reorder the palette
  freely, so a GIF's indices carry no meaning.
- JPEG masks (and masks detected as lossily saved) have every pixel snapped to the nearest class
  value/color, with a `LossyMaskWarning` that names the file and counts the snapped pixels.
- .npy masks are read with `allow_pickle=False`, always: a pickled file is refused, never unpickled.

Encodings live in encoding.py, image reading in images.py, snapping in lossy.py, detection in detect.py;
import those names from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from masksmith.core.fileio import atomic_path
from masksmith.data.encoding import (
    DEFAULT_IGNORE_INDEX,
    MaskEncoding,
    check_class_range,
    describe_encoding,
    ignore_value_problem,
)
from masksmith.data.images import LOSSY_FORMATS, NPY_SUFFIX, load_npy, open_decoded
from masksmith.data.lossy import looks_lossy, nearest_center, refuse_far_regions, warn_snapped
from masksmith.data.palette import color_text, pack_colors, unpack_colors
from masksmith.errors import ConfigError, DataError

__all__ = ["ColorLookup", "RawMask", "binary_classes", "binary_strays", "classify_colors", "decode_mask",
           "encode_mask", "load_raw_mask", "read_mask", "read_mask_values", "writable_mask_suffix", "write_mask"]


@dataclass
class RawMask:
    """A mask file's pixels before decoding."""

    values: np.ndarray  # HxW values (palette images: indices), or HxWx3 uint8 for true-color masks
    palette: np.ndarray | None  # 256x3 uint8 for palette images, turning indices into colors
    jpeg: bool  # stored in a lossy format

    def rgb(self, path: Path) -> np.ndarray:
        """The pixels as HxWx3 uint8 colors (palette indices through the palette, gray values repeated)."""
        if self.values.ndim == 3:
            return self.values
        if self.palette is not None:
            return self.palette[self.values]
        return _gray_to_rgb(self.values, f"{path}: ")


def _gray_to_rgb(values: np.ndarray, where: str) -> np.ndarray:
    """Gray values v as colors (v, v, v); values beyond 8 bits cannot be colors."""
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(f"{where}mask values {int(values.min())}..{int(values.max())} are not 8-bit colors")
    return np.repeat(values.astype(np.uint8)[:, :, None], 3, axis=2)


def _gray_or_color(rgb: np.ndarray) -> np.ndarray:
    """HxW when every pixel is gray (R = G = B: a grayscale mask stored as RGB), else the HxWx3 colors."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy()
    return np.ascontiguousarray(rgb)


def _palette_table(image: Image.Image) -> np.ndarray:
    """The 256x3 uint8 palette of a P-mode image (missing entries black)."""
    table = np.zeros((256, 3), np.uint8)
    flat = image.getpalette("RGB") or []
    entries = np.asarray(flat[: 256 * 3], np.uint8).reshape(-1, 3)
    table[: len(entries)] = entries
    return table


def _npy_mask(path: Path) -> np.ndarray:
    """A 2-D integer (or bool) .npy mask."""
    array = load_npy(path, "mask")
    if array.ndim != 2:
        raise DataError(f"{path}: mask array must be 2-D (height x width), got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)  # bool masks are binary 0/1
    if array.dtype.kind not in "ui":
        raise DataError(
            f"{path}: mask array has dtype {array.dtype}; save class indices as integers (or bool for binary masks)"
        )
    return array


def load_raw_mask(path: Path) -> RawMask:
    """Read a mask file (any image format PIL reads, or .npy) into raw pixels."""
    if path.suffix.lower() == NPY_SUFFIX:
        return RawMask(_npy_mask(path), None, False)
    image = open_decoded(path, "mask", single_frame=True)
    jpeg = image.format in LOSSY_FORMATS
    mode = image.mode
    if mode == "1":
        return RawMask(np.asarray(image).astype(np.uint8), None, jpeg)
    if mode in ("P", "PA"):
        indices = np.asarray(image)
        indices = (indices[..., 0] if indices.ndim == 3 else indices).copy()
        table = _palette_table(image)
        if image.format == "GIF":
            # GIF stores only palette indices and writers reorder the palette at will: the colors are the data.
            return RawMask(_gray_or_color(table[indices]), None, jpeg)
        return RawMask(indices, table, jpeg)
    if mode in ("L", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        return RawMask(np.asarray(image).copy(), None, jpeg)
    if mode in ("LA", "La"):
        return RawMask(np.asarray(image)[..., 0].copy(), None, jpeg)
    if mode == "F":
        values = np.asarray(image)
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise DataError(f"{path}: mask has non-integer (float) values; save class indices as integers")
        return RawMask(values.astype(np.int32), None, jpeg)
    if mode in ("RGB", "RGBA", "RGBX"):
        return RawMask(_gray_or_color(np.asarray(image)[..., :3]), None, jpeg)
    raise DataError(f"{path}: mask has unsupported image mode {mode}; save it as a grayscale, palette or RGB PNG")


def read_mask_values(path: str | Path, *, rgb: bool = False) -> np.ndarray:
    """A mask's raw pixels: HxW values (palette PNGs: indices), HxWx3 for RGB color masks; rgb=True: always colors."""
    path = Path(path)
    raw = load_raw_mask(path)
    return raw.rgb(path) if rgb else raw.values



# --- decoding -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColorLookup:
    """A color table ready for lookups: class colors (+ the ignore color) and their classes, sorted by key."""

    colors: np.ndarray  # Kx3 uint8, class order, the ignore color last
    classes: np.ndarray  # K uint8: class index per color (ignore_index for the ignore color)
    sorted_keys: np.ndarray
    sorted_classes: np.ndarray

    @staticmethod
    def of(encoding: MaskEncoding, ignore_index: int) -> ColorLookup:
        """The lookup for a color encoding."""
        assert encoding.colors is not None
        colors = np.asarray(encoding.colors, np.uint8).reshape(-1, 3)
        classes = np.arange(len(colors), dtype=np.uint8)
        if encoding.ignore_color is not None:
            colors = np.vstack([colors, np.asarray(encoding.ignore_color, np.uint8)])
            classes = np.append(classes, np.uint8(ignore_index))
        keys = pack_colors(colors)
        order = np.argsort(keys)
        return ColorLookup(colors, classes, keys[order], classes[order])

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class per packed key, whether the key is in the table), by binary search."""
        pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.sorted_keys) - 1)
        return self.sorted_classes[pos], self.sorted_keys[pos] == keys


def classify_colors(
    keys: np.ndarray, counts: np.ndarray, lookup: ColorLookup, where: str, lossy_reason: str | None,
) -> tuple[np.ndarray, int, str | None]:
    """Class index per distinct packed color; returns (classes, snapped pixels, reason the mask counts as lossy)."""
    classes, hit = lookup.find(keys)
    if hit.all():
        return classes, 0, lossy_reason
    miss_colors = unpack_colors(keys[~hit])
    miss_counts = counts[~hit]
    nearest, distance = nearest_center(miss_colors, lookup.colors)
    if lossy_reason is None and looks_lossy(miss_counts, distance, "color"):
        lossy_reason = "mask has compression artifacts (many colors near the class colors)"
    if lossy_reason is None:
        top = np.argsort(-miss_counts, kind="stable")[:5]
        shown = ", ".join(f"{color_text(miss_colors[i])} × {int(miss_counts[i])} px" for i in top)
        more = f" (and {len(miss_counts) - 5} more)" if len(miss_counts) > 5 else ""
        raise DataError(
            f"{where}{len(miss_counts)} color(s) not in the color table of {len(lookup.classes)} colors: "
            f"{shown}{more}; add them to the palette file, or set the ignore color"
        )
    refuse_far_regions(where, miss_colors, miss_counts, distance, int(counts.sum()), "color")
    classes = classes.copy()
    classes[~hit] = lookup.classes[nearest]
    return classes, int(miss_counts.sum()), lossy_reason


def _decode_color(rgb: np.ndarray, encoding: MaskEncoding, ignore_index: int, where: str,
                  lossy_reason: str | None) -> np.ndarray:
    """HxWx3 colors -> HxW class indices through the encoding's color table."""
    packed = pack_colors(rgb)
    lookup = ColorLookup.of(encoding, ignore_index)
    # Exact lookups by binary search (no sort of the whole image); only the misses go through np.unique.
    out, hit = lookup.find(packed)
    if hit.all():
        return out
    miss_keys, inverse, miss_counts = np.unique(packed[~hit], return_inverse=True, return_counts=True)
    miss_classes, snapped, reason = classify_colors(miss_keys, miss_counts, lookup, where, lossy_reason)
    out[~hit] = miss_classes[inverse]
    assert reason is not None
    warn_snapped(where, reason, snapped, packed.size, "color")
    return out


def binary_classes(values: np.ndarray, encoding: MaskEncoding, lossy: bool) -> np.ndarray:
    """Class 0/1 per value: the foreground value (any non-zero if unknown); lossy: the nearer of the two values."""
    if lossy:  # a threshold at the midpoint; an unknown foreground is taken as 255
        foreground = 255 if encoding.foreground is None else encoding.foreground
        assert encoding.background is not None
        wide = values.astype(np.int64)
        return (np.abs(wide - foreground) < np.abs(wide - encoding.background)).astype(np.uint8)
    if encoding.foreground is None:
        return (values > 0).astype(np.uint8)
    return (values == encoding.foreground).astype(np.uint8)


def binary_strays(values: np.ndarray, counts: np.ndarray, encoding: MaskEncoding) -> tuple[int, list[int]]:
    """(pixels, distinct values) of a clean binary mask's histogram that are neither foreground nor background.

    Decoding counts them as background; with foreground None (any non-zero value) or a lossy
    encoding (snapped to the nearer value, with its own warning) there are none.
    """
    if encoding.kind != "binary" or encoding.foreground is None or encoding.lossy:
        return 0, []
    stray = (values != encoding.foreground) & (values != encoding.background)
    return int(np.asarray(counts)[stray].sum()), [int(v) for v in np.asarray(values)[stray]]



def _snap_binary(values: np.ndarray, encoding: MaskEncoding, where: str, reason: str) -> np.ndarray:
    """Lossy binary mask: each pixel goes to whichever of the two values is nearer, with a warning."""
    exact = (values == encoding.background) | (values == (255 if encoding.foreground is None else encoding.foreground))
    warn_snapped(where, reason, int(values.size - np.count_nonzero(exact)), values.size, "value")
    return binary_classes(values, encoding, lossy=True)


def _snap_index(values: np.ndarray, num_classes: int, ignore_index: int, where: str, reason: str) -> np.ndarray:
    """Lossy index mask: values that are no class (nor ignore) go to the nearest one that is."""
    present, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    valid = np.append(np.arange(num_classes), ignore_index)
    bad = ~np.isin(present, valid)
    mapped = present.astype(np.int64)
    if bad.any():
        nearest, distance = nearest_center(present[bad, None], valid[:, None])
        refuse_far_regions(where, present[bad, None], counts[bad], distance, values.size, "gray")
        mapped[bad] = valid[nearest]
    warn_snapped(where, reason, int(counts[bad].sum()), values.size, "value")
    return mapped.astype(np.uint8)[inverse.reshape(values.shape)]


def _decode(values: np.ndarray, encoding: MaskEncoding, num_classes: int, ignore_index: int,
            path: str | Path | None, lossy_reason: str | None) -> np.ndarray:
    """decode_mask with the reason (or None) for treating this mask as lossy."""
    where = f"{path}: " if path is not None else ""
    if encoding.kind == "color":
        assert encoding.colors is not None
        if num_classes != len(encoding.colors):
            raise ConfigError(
                f"color masks have {len(encoding.colors)} classes (one per color), got num_classes={num_classes}"
            )
        check_class_range(num_classes, ignore_index)
        if values.ndim == 3 and values.shape[2] in (3, 4):
            rgb = values[..., :3]
        elif values.ndim == 2:
            rgb = _gray_to_rgb(values, where)  # a gray mask among color masks
        else:
            raise DataError(f"{where}color mask must be HxWx3 (RGB), got shape {values.shape}")
        if rgb.dtype != np.uint8:
            raise DataError(f"{where}color mask must hold 8-bit colors, got {rgb.dtype}")
        return _decode_color(rgb, encoding, ignore_index, where, lossy_reason)
    if values.ndim == 3 and values.shape[2] in (3, 4):
        raise DataError(
            f"{where}is an RGB color mask, but the masks were read as {describe_encoding(encoding)}; "
            "color masks need a color table (detect_encoding finds one, or give a palette file)"
        )
    if values.ndim != 2:
        raise DataError(f"{where}mask must be 2-D (height x width), got shape {values.shape}")
    if encoding.kind == "binary":
        if num_classes != 2:
            raise ConfigError(f"binary masks have 2 classes (background, foreground), got num_classes={num_classes}")
        if lossy_reason is not None:
            return _snap_binary(values, encoding, where, lossy_reason)
        return binary_classes(values, encoding, lossy=False)

    check_class_range(num_classes, ignore_index)
    if lossy_reason is not None:
        return _snap_index(values, num_classes, ignore_index, where, lossy_reason)
    present = np.unique(values)
    bad = [int(v) for v in present if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (f", … and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(
            f"{where}mask values [{shown}] outside the 0..{num_classes - 1} classes ({num_classes} classes)"
        )
    return values.astype(np.uint8)


def decode_mask(
    values: np.ndarray,
    encoding: MaskEncoding,
    num_classes: int,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    path: str | Path | None = None,
    *,
    lossy: bool | None = None,
) -> np.ndarray:
    """Turn raw mask values (HxW, or HxWx3 colors) into an HxW uint8 class-index array; lossy=None: encoding.lossy."""
    lossy = encoding.lossy if lossy is None else lossy
    return _decode(values, encoding, num_classes, ignore_index, path, "lossy mask" if lossy else None)


def read_mask(path: str | Path, encoding: MaskEncoding, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX) -> np.ndarray:
    """Read and decode a mask file into an HxW uint8 class-index array (JPEG masks snapped, with a warning)."""
    path = Path(path)
    raw = load_raw_mask(path)
    reason = "lossy JPEG mask" if raw.jpeg else ("lossy mask" if encoding.lossy else None)
    values = raw.rgb(path) if encoding.kind == "color" else raw.values
    return _decode(values, encoding, num_classes, ignore_index, path, reason)


# --- encoding back ------------------------------------------------------------------------------------


def encode_mask(mask: np.ndarray, encoding: MaskEncoding, ignore_index: int = DEFAULT_IGNORE_INDEX) -> np.ndarray:
    """Inverse of decoding: class indices -> the dataset's own values (binary values, RGB colors or indices)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise DataError(f"a class-index mask must be a 2-D integer array, got shape {mask.shape}, dtype {mask.dtype}")
    present = np.unique(mask).astype(np.int64)
    if encoding.kind == "index":
        bad = present[(present < 0) | (present > 255)]
        if bad.size:
            raise DataError(f"mask values {bad[:10].tolist()} do not fit a uint8 index mask")
        return mask.astype(np.uint8)
    if encoding.kind == "binary":
        bad = present[(present != 0) & (present != 1)]
        if bad.size:
            raise DataError(f"a binary mask holds classes 0 and 1 only, got values {bad[:10].tolist()}")
        foreground = 255 if encoding.foreground is None else encoding.foreground
        background = encoding.background
        assert background is not None
        top = max(foreground, background)
        dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int32
        return np.where(mask == 1, foreground, background).astype(dtype)
    assert encoding.colors is not None
    lut = np.zeros((256, 3), np.uint8)
    known = np.zeros(256, bool)
    lut[: len(encoding.colors)] = encoding.colors
    known[: len(encoding.colors)] = True
    if encoding.ignore_color is not None and ignore_value_problem(ignore_index) is None:
        lut[ignore_index] = encoding.ignore_color
        known[ignore_index] = True
    bad = present[(present < 0) | (present > 255)]
    if not bad.size:
        bad = present[~known[present]]
    if bad.size:
        raise DataError(
            f"mask values {bad[:10].tolist()} have no color in the table of {len(encoding.colors)} classes"
            + ("" if encoding.ignore_color is not None else " (and the encoding has no ignore color)")
        )
    return lut[mask.astype(np.intp)]


_WRITE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


def writable_mask_suffix(path: str | Path) -> bool:
    """Whether `write_mask` writes this file type (.png, .tif/.tiff or .npy: lossless ones)."""
    suffix = Path(path).suffix.lower()
    return suffix in _WRITE_FORMATS or suffix == NPY_SUFFIX


def write_mask(path: str | Path, mask: np.ndarray, encoding: MaskEncoding, ignore_index: int = DEFAULT_IGNORE_INDEX,
               *, palette: np.ndarray | None = None) -> Path:
    """Write a class-index mask in the dataset's own encoding (.png, .tif/.tiff or .npy; lossless only), atomically.

    palette: a 256x3 uint8 table; index masks are then written as palette images (VOC's form: the values
    are the class indices, the palette only shows them), as a dataset of palette PNGs stores its masks.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not writable_mask_suffix(path):
        raise ConfigError(
            f"{path}: masks are written as .png, .tif/.tiff or .npy (lossless); {suffix or 'no suffix'} is not one"
        )
    encoded = encode_mask(mask, encoding, ignore_index)
    with atomic_path(path) as tmp:
        if suffix == NPY_SUFFIX:
            with open(tmp, "wb") as handle:  # a handle: np.save would append .npy to the temporary name
                np.save(handle, encoded, allow_pickle=False)
        else:
            image = Image.fromarray(encoded)
            if palette is not None and encoding.kind == "index":
                # putpalette turns the "L" image into "P" without touching the values (convert() would remap).
                image.putpalette(np.asarray(palette, np.uint8).reshape(-1, 3)[:256].tobytes(), rawmode="RGB")
            image.save(tmp, format=_WRITE_FORMATS[suffix])
    return path


