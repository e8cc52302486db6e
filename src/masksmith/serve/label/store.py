"""The dataset side of `masksmith label`: the images by id, their states, and masks read and saved in the
dataset's own encoding (as `check` detects it), atomically, with a version token against lost updates.

A mask's version is the SHA-256 of its file ("none" before it exists). A save names the version it
started from; when the file changed since (another tab, another program), the save is refused with
`Conflict` instead of replacing a person's mask silently. Checks and writes happen under one lock.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import ExifTags

from masksmith.bundle import BundleMeta
from masksmith.data.classes import class_list_name, find_class_file, read_class_names, without_named_void
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MaskEncoding
from masksmith.data.images import NPY_SUFFIX, read_image
from masksmith.data.labels import LabelSpec, display_colors, resolve_labels
from masksmith.data.limits import open_image
from masksmith.data.masks import load_raw_mask, read_mask, write_mask
from masksmith.data.palette import read_palette_file
from masksmith.errors import ConfigError, DataError
from masksmith.serve.label.layout import Entry, Listing, list_images
from masksmith.serve.label.provenance import Provenance
from masksmith.visualize import image_bytes

NO_MASK = "none"  # the version of a mask that does not exist yet
STARTS = ("prediction", "mask", "empty")  # what an edit started from
# Formats every browser shows as they are; anything else is decoded here and sent as PNG.
BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp",
                   "GIF": "image/gif"}
_ORIENTATION = ExifTags.Base.Orientation
_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class Conflict(Exception):
    """The mask on disk is not the version the save started from."""

    def __init__(self, current: str):
        super().__init__(current)
        self.current = current


@dataclass(frozen=True)
class LabelOptions:
    """How DATA's masks are read (as `check` and `train` take them) and where the images are."""

    classes: str | None = None
    foreground: int | None = None
    palette: str | None = None
    ignore_color: tuple[int, int, int] | None = None
    ignore_index: int | None = None
    mask_suffix: str | None = None


def _names_text(names: Sequence[str]) -> str:
    shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
    return f"[{shown}]"


def decide_labels(listing: Listing, options: LabelOptions, model: BundleMeta | None) -> LabelSpec:
    """The dataset's classes, encoding, colors and ignore value: from its masks as `check` decides them, else
    from the model (whose bundle records its training masks' encoding), else from the options."""
    classes = options.classes or find_class_file(listing.root)
    given_ignore = options.ignore_index
    if given_ignore is None and model is not None:
        given_ignore = model.ignore_index  # the value it was trained with: a void it names is left out as in training
    ignore = DEFAULT_IGNORE_INDEX if given_ignore is None else given_ignore
    if listing.masks:
        spec = resolve_labels(listing.masks, classes=classes, foreground=options.foreground, palette=options.palette,
                              ignore_color=options.ignore_color, ignore_index=given_ignore)
    elif model is not None:
        spec = LabelSpec.from_dict(model.model_dump())
        names, _ = without_named_void(read_class_names(classes), spec.ignore_index, class_list_name(classes))
        if names is not None and len(names) == spec.num_classes:
            spec = LabelSpec(spec.encoding, tuple(names), spec.colors, spec.ignore_index)
    elif options.palette is not None:
        names, colors = read_palette_file(options.palette)
        encoding = MaskEncoding("color", colors=colors, names=names, ignore_color=options.ignore_color)
        spec = LabelSpec(encoding, tuple(names), tuple(colors), ignore)
    elif classes is not None or options.foreground is not None:
        names = read_class_names(classes) or ["background", "foreground"]
        binary = options.foreground is not None
        encoding = MaskEncoding("binary", options.foreground) if binary else MaskEncoding("index")
        if binary and len(names) != 2:
            raise ConfigError(f"--foreground is for two classes (background, foreground); {classes} names {len(names)}")
        spec = LabelSpec(encoding, tuple(names), display_colors(encoding, len(names)), ignore)
    else:
        raise ConfigError(f"{listing.root}: no masks yet, so the classes are unknown: give --classes classes.txt "
                          "(one name a line, background first), --foreground VALUE for binary masks, "
                          "--palette for RGB color masks, or --model")
    if model is not None and model.num_classes != spec.num_classes:
        raise ConfigError(f"the model has {model.num_classes} classes {_names_text(model.class_names)} but "
                          f"{listing.root} has {spec.num_classes} {_names_text(spec.class_names)}")
    return spec


def dataset_palette(listing: Listing, spec: LabelSpec) -> np.ndarray | None:
    """The palette new index masks are written with: the dataset's own when its masks are palette PNGs,
    a fresh dataset's display colors, and none when its masks are plain grayscale."""
    if spec.encoding.kind != "index":
        return None
    for mask in listing.masks:
        if mask.suffix.lower() == ".png":
            try:
                return load_raw_mask(mask).palette  # None for a grayscale mask
            except DataError:
                continue
    if listing.masks:
        return None
    table = np.zeros((256, 3), np.uint8)
    table[: spec.num_classes] = np.asarray(spec.colors, np.uint8)
    return table


def file_version(path: Path) -> str:
    """'sha256:<hex>' of a mask file, or NO_MASK when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return NO_MASK
    return "sha256:" + hashlib.sha256(data).hexdigest()


class LabelStore:
    """DATA's images by id, their masks in the dataset's encoding, and who made each one."""

    def __init__(self, listing: Listing, labels: LabelSpec, palette: np.ndarray | None = None):
        self.listing = listing
        self.root = listing.root
        self.root_real = os.path.realpath(listing.root)
        self.labels = labels
        self.palette = palette
        self.entries = {entry.id: entry for entry in listing.entries}
        self.provenance = {folder: Provenance(folder) for folder in
                           dict.fromkeys(entry.target.parent for entry in listing.entries)}
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[int, int]] = {}

    @classmethod
    def open(cls, root: str | Path, options: LabelOptions = LabelOptions(),
             model: BundleMeta | None = None) -> "LabelStore":
        """List DATA's images, decide its labels and read its label records; one-line errors for bad data."""
        listing = list_images(root, options.mask_suffix)
        labels = decide_labels(listing, options, model)
        return cls(listing, labels, dataset_palette(listing, labels))

    @property
    def writable_ignore(self) -> bool:
        """Whether the masks can hold ignored pixels: index masks and color masks with an ignore color can."""
        encoding = self.labels.encoding
        return encoding.kind == "index" or (encoding.kind == "color" and encoding.ignore_color is not None)

    def entry(self, image_id: str) -> Entry | None:
        """The image of an id, or None (an id is looked up, never turned into a path)."""
        return self.entries.get(image_id)

    def has_mask(self, entry: Entry) -> bool:
        """Whether the image's mask is on disk."""
        return entry.target.is_file()

    def record(self, entry: Entry) -> dict[str, Any] | None:
        """Who made the image's mask, when recorded here."""
        return self.provenance[entry.target.parent].get(entry.target.name) if self.has_mask(entry) else None

    def state(self, entry: Entry) -> str:
        """'unlabelled', 'labelled' (a mask made elsewhere), 'corrected' or 'drawn' (made on this page)."""
        if not self.has_mask(entry):
            return "unlabelled"
        record = self.record(entry)
        return record["by"] if record is not None else "labelled"

    def version(self, entry: Entry) -> str:
        """The version token of the image's mask."""
        return file_version(entry.target)

    def image_size(self, entry: Entry) -> tuple[int, int]:
        """(height, width) of the image as `read_image` gives it (upright, as its EXIF tag says)."""
        if entry.id not in self._sizes:
            if entry.image.suffix.lower() == NPY_SUFFIX:
                height, width = read_image(entry.image).shape[:2]
            else:
                try:
                    with open_image(entry.image, "image") as image:
                        width, height = image.size
                        if image.getexif().get(_ORIENTATION) in _TURNED:
                            width, height = height, width
                except DataError:
                    raise
                except Exception as error:  # PIL's many types for files that are not images
                    raise DataError(f"{entry.image}: cannot read image: {' '.join(str(error).split())}") from None
            self._sizes[entry.id] = (int(height), int(width))
        return self._sizes[entry.id]

    def image_for_browser(self, entry: Entry) -> tuple[bytes, str]:
        """(bytes, media type) of the image as a browser can show it, upright and at its full size."""
        if entry.image.suffix.lower() != NPY_SUFFIX:
            try:
                with open_image(entry.image, "image") as image:
                    media = BROWSER_FORMATS.get(image.format or "")
                    plain = image.getexif().get(_ORIENTATION) in (None, 1) and getattr(image, "n_frames", 1) == 1
            except DataError:
                raise
            except Exception as error:
                raise DataError(f"{entry.image}: cannot read image: {' '.join(str(error).split())}") from None
            if media is not None and plain:
                return entry.image.read_bytes(), media
        # TIFF, 16-bit, .npy, EXIF-rotated: the pixels `predict` reads, as PNG.
        return image_bytes(read_image(entry.image), "PNG"), "image/png"

    def read_mask(self, entry: Entry) -> np.ndarray:
        """The image's mask as class indices (HxW uint8); DataError for a mask that does not decode or fit."""
        labels = self.labels
        mask = read_mask(entry.target, labels.encoding, labels.num_classes, labels.ignore_index)
        height, width = self.image_size(entry)
        if mask.shape != (height, width):
            raise DataError(f"{entry.target}: the mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{entry.image.name} is {width}x{height}")
        return mask

    def check_mask(self, entry: Entry, mask: np.ndarray) -> str | None:
        """Why a class-index mask cannot be the image's (size, values), or None."""
        height, width = self.image_size(entry)
        if mask.shape != (height, width):
            return f"the mask is {mask.shape[1]}x{mask.shape[0]} but {entry.relative} is {width}x{height}"
        counts = np.bincount(mask.ravel(), minlength=256)
        allowed = np.zeros(256, bool)
        allowed[: self.labels.num_classes] = True
        if self.writable_ignore:
            allowed[self.labels.ignore_index] = True
        bad = np.flatnonzero((counts > 0) & ~allowed)
        if bad.size:
            ignore = f" or the ignore value {self.labels.ignore_index}" if self.writable_ignore else ""
            return (f"mask values {bad[:10].tolist()} are no class (0..{self.labels.num_classes - 1}{ignore}) "
                    f"of {entry.relative}")
        return None

    def _check_target(self, entry: Entry) -> None:
        """The mask file stays inside DATA and is no link, checked again at save time."""
        target = entry.target
        parent = os.path.realpath(target.parent)
        if not (parent == self.root_real or parent.startswith(self.root_real.rstrip(os.sep) + os.sep)):
            raise DataError(f"{target.parent}: points outside {self.root}; the mask is not written")
        if target.is_symlink():
            raise DataError(f"{target}: is a symbolic link; the mask is not written through it")

    def save(self, entry: Entry, mask: np.ndarray, version: str, start: str, model: str | None) -> dict[str, Any]:
        """Write the image's mask (checked with check_mask first) in the dataset's encoding, atomically, and record
        who made it; Conflict when the mask on disk is not `version`. start: what the edit started from."""
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        with self._lock:
            current = self.version(entry)
            if current != version:
                raise Conflict(current)
            self._check_target(entry)
            previous = self.record(entry)
            if start == "prediction":
                by = "corrected"
            elif start == "empty":
                by = "drawn"
            else:  # a mask already on disk, edited: a drawn mask stays drawn, anything else was corrected
                by = previous["by"] if previous is not None else "corrected"
            labels = self.labels
            write_mask(entry.target, mask, labels.encoding, labels.ignore_index, palette=self.palette)
            # The model whose prediction the mask started from (an edit of a recorded mask keeps its model).
            made_from = model if start == "prediction" else previous["model"] if previous and start == "mask" else None
            record = self.provenance[entry.target.parent].record(entry.target.name, by, made_from)
            return {"version": self.version(entry), "state": by, "record": record}


def decode_png_mask(data: bytes, where: str) -> np.ndarray:
    """A class-index PNG (grayscale or palette: the values are the classes) as HxW uint8."""
    with open_image(io.BytesIO(data), "mask", where=where) as image:
        if image.format != "PNG" or image.mode not in ("L", "P"):
            raise DataError(f"{where}: a mask upload is an 8-bit grayscale or palette PNG of class indices, "
                            f"got {image.format} {image.mode}")
        image.load()
        return np.asarray(image, dtype=np.uint8).copy()
