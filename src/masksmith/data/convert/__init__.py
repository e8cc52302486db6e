"""Annotations (Labelme JSON, COCO) → VOC-style folders of images and class-index masks.

Both converters write the layout Labelme's ``labelme2voc.py`` writes, which the rest of masksmith reads
as a dataset::

    OUT/JPEGImages/<stem>.jpg                     the photo
    OUT/SegmentationClass/<stem>.png              palette PNG, pixel value = class index, 255 = ignore
    OUT/SegmentationClassVisualization/<stem>.jpg overlay (optional)
    OUT/SegmentationObject/<stem>.png             instance ids 1..N, 0 = background (when instances exist)
    OUT/SegmentationObjectVisualization/<stem>.jpg
    OUT/class_names.txt                           one class name per line, background first

A bad annotation file (or, for COCO, a bad image entry) is recorded in :class:`ConvertReport.failed`
with a one-line reason naming the file, and the run goes on; problems that make the whole run
meaningless (no input files, an unreadable labels/annotations file) raise :class:`DataError`.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from masksmith.fileio import atomic_path, write_text_atomic
from masksmith.visualize import default_colors, overlay, save_image, save_mask_png

__all__ = ["ConvertReport", "convert_labelme", "convert_coco"]

IGNORE_INDEX = 255
# Orientation tag in EXIF; a JPEG carrying a rotation must be re-encoded upright, not copied.
_EXIF_ORIENTATION = 0x0112


@dataclass
class ConvertReport:
    """What a conversion wrote (stems), what it could not convert (path, reason) and the class list."""

    written: list[str] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


def _copyable_jpeg(data: bytes) -> bool:
    """True for JPEG bytes without an EXIF rotation: those can be copied verbatim, losslessly."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format == "JPEG" and image.getexif().get(_EXIF_ORIENTATION, 1) in (1, None)
    except Exception:  # noqa: BLE001 - anything unreadable is re-encoded from the decoded array instead
        return False


def write_sample(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    source: bytes | Path | None,
    class_mask: np.ndarray,
    class_colors: np.ndarray,
    object_mask: np.ndarray | None,
    visualize: bool,
) -> None:
    """Write one converted sample in the VOC layout (every file atomically)."""
    jpeg_path = out_dir / "JPEGImages" / f"{stem}.jpg"
    data = source.read_bytes() if isinstance(source, Path) else source
    if data is not None and _copyable_jpeg(data):
        # Re-encoding a JPEG loses quality each time; an upright JPEG is copied byte for byte.
        with atomic_path(jpeg_path) as tmp:
            tmp.write_bytes(data)
    else:
        save_image(image, jpeg_path)
    save_mask_png(class_mask, out_dir / "SegmentationClass" / f"{stem}.png", class_colors, IGNORE_INDEX)
    if visualize:
        save_image(overlay(image, class_mask, class_colors),
                   out_dir / "SegmentationClassVisualization" / f"{stem}.jpg")
    if object_mask is not None:
        ids = object_mask[object_mask != IGNORE_INDEX]
        object_colors = default_colors(int(ids.max()) + 1 if ids.size else 1)
        save_mask_png(object_mask, out_dir / "SegmentationObject" / f"{stem}.png", object_colors, IGNORE_INDEX)
        if visualize:
            save_image(overlay(image, object_mask, object_colors),
                       out_dir / "SegmentationObjectVisualization" / f"{stem}.jpg")


def write_class_names(out_dir: Path, class_names: list[str]) -> None:
    """Write OUT/class_names.txt; no trailing newline, byte-identical to what labelme2voc.py writes."""
    write_text_atomic(out_dir / "class_names.txt", "\n".join(class_names))


def copy_file_atomic(src: Path, dst: Path) -> None:
    """Copy a file so that `dst` is either absent or complete."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


# Imported last: both modules use ConvertReport and the writers above from this package.
from masksmith.data.convert.coco import convert_coco  # noqa: E402
from masksmith.data.convert.labelme import convert_labelme  # noqa: E402
