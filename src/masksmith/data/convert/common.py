"""What every converter shares: the VOC-style output (one sample's files, class_names.txt, split lists), the
report, finding an annotation's image, stems, and polygon clipping."""


from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from masksmith.core.fileio import atomic_path, refuse_overwrite, require_writable, write_text_atomic
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX
from masksmith.data.images import read_image
from masksmith.errors import ConfigError, DataError, MasksmithError
from masksmith.visualize import default_colors, overlay, save_image, save_mask_png

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


def sample_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """Where write_sample puts each file of one sample (the one place these names are decided)."""
    return {
        "image": out_dir / "JPEGImages" / f"{stem}.jpg",
        "class": out_dir / "SegmentationClass" / f"{stem}.png",
        "class_viz": out_dir / "SegmentationClassVisualization" / f"{stem}.jpg",
        "object": out_dir / "SegmentationObject" / f"{stem}.png",
        "object_viz": out_dir / "SegmentationObjectVisualization" / f"{stem}.jpg",
    }


def refuse_overwriting_sources(out_dir: Path, source_dir: Path, inputs: list[Path], stems: list[str],
                               *, visualize: bool, objects: bool) -> None:
    """ConfigError before any work when OUT is the source folder or any output would replace an input file."""
    if out_dir.resolve() == source_dir.resolve():
        # The copies in OUT/JPEGImages would sit beside (and a rerun would read) the originals.
        raise ConfigError(f"{out_dir}: is the folder the annotations and images are read from; "
                          "convert into a folder of its own")
    wanted = {"image", "class"}
    if objects:
        wanted.add("object")
    if visualize:
        wanted |= {"class_viz", "object_viz"} if objects else {"class_viz"}
    outputs = [out_dir / "class_names.txt"]
    outputs += [path for stem in stems for key, path in sample_paths(out_dir, stem).items() if key in wanted]
    refuse_overwrite(inputs, outputs)


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
    paths = sample_paths(out_dir, stem)
    jpeg_path = paths["image"]
    data = source.read_bytes() if isinstance(source, Path) else source
    if data is not None and _copyable_jpeg(data):
        # Re-encoding a JPEG loses quality each time; an upright JPEG is copied byte for byte.
        with atomic_path(jpeg_path) as tmp:
            tmp.write_bytes(data)
    else:
        save_image(image, jpeg_path)
    save_mask_png(class_mask, paths["class"], class_colors, ignore_index=DEFAULT_IGNORE_INDEX)
    if visualize:
        save_image(overlay(image, class_mask, class_colors, ignore_index=DEFAULT_IGNORE_INDEX), paths["class_viz"])
    if object_mask is not None:
        ids = object_mask[object_mask != DEFAULT_IGNORE_INDEX]
        object_colors = default_colors(int(ids.max()) + 1 if ids.size else 1)
        save_mask_png(object_mask, paths["object"], object_colors, ignore_index=DEFAULT_IGNORE_INDEX)
        if visualize:
            save_image(overlay(image, object_mask, object_colors, ignore_index=DEFAULT_IGNORE_INDEX),
                       paths["object_viz"])


def open_output(out_dir: Path, source_dir: Path, inputs: list[Path], stems: list[str], class_names: list[str],
                *, visualize: bool, objects: bool) -> None:
    """Before any sample is written: refuse outputs that would replace an input, prove OUT writable (one line
    otherwise) and write OUT/class_names.txt."""
    refuse_overwriting_sources(out_dir, source_dir, inputs, stems, visualize=visualize, objects=objects)
    require_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_class_names(out_dir, class_names)


def output_stem(file_name: str) -> str:
    """The name an image's outputs get: its file name's stem (Windows separators allowed)."""
    return Path(file_name.replace("\\", "/")).stem


def write_class_names(out_dir: Path, class_names: list[str]) -> None:
    """Write OUT/class_names.txt; no trailing newline, byte-identical to what labelme2voc.py writes."""
    write_text_atomic(out_dir / "class_names.txt", "\n".join(class_names))


def write_image_sets(out_dir: Path, splits: dict[str, list[str]]) -> None:
    """Write OUT/ImageSets/Segmentation/<split>.txt, one stem a line, as VOC lists its splits."""
    for split, stems in splits.items():
        write_text_atomic(out_dir / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{s}\n" for s in stems))


def find_image(where: str, images_dir: Path, file_name: str) -> Path:
    """The image a COCO file_name or CVAT image name means: as written under images_dir, else by its base name."""
    relative = Path(file_name.replace("\\", "/"))  # Windows separators, as some tools write them
    candidates = [images_dir / relative, images_dir / relative.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{where}: image file not found (looked for {candidates[0]}"
                    + (f" and {candidates[1]})" if candidates[1] != candidates[0] else ")"))


def images_found(images_dir: Path, names: Iterable[str]) -> list[Path]:
    """The images that `names` (COCO file_names, CVAT image names) mean and that exist: the inputs no output may
    replace. A missing one is not an error here; it is reported when that image's turn comes."""
    found = []
    for name in names:
        try:
            found.append(find_image(name, images_dir, name))
        except DataError:
            pass
    return found


def read_photo(where: str, path: Path) -> np.ndarray:
    """The RGB image at `path`, or a DataError naming `where` (the annotation entry) and the problem."""
    try:
        return read_image(path, channels=3)
    except MasksmithError as exc:
        raise DataError(f"{where}: {exc}") from None


def claim_stem(claimed: dict[str, str], stem: str, name: str, where: str) -> None:
    """Record that `name` is written as <stem>.*; DataError when another input already took that stem."""
    if stem in claimed:
        # Both would be written as <stem>.png; converting one over the other loses data silently.
        raise DataError(f"{where}: has the same stem as {claimed[stem]!r}; rename one of them")
    claimed[stem] = name


def clip_polygon(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Sutherland–Hodgman clip to an axis-aligned box; keeps the polygon's area inside the box."""
    x0, y0, x1, y1 = box
    boundaries = ((0, x0, 1), (0, x1, -1), (1, y0, 1), (1, y1, -1))  # (axis, bound, inner side)
    # Beyond 1e12 px the direction of an edge into the image no longer changes by a measurable
    # amount, and staying there keeps the arithmetic below finite (1e308 - -1e308 is inf).
    pts = [tuple(p) for p in np.clip(points, -1e12, 1e12).tolist()]
    for axis, bound, side in boundaries:
        if not pts:
            break
        clipped = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            cur_in = (cur[axis] - bound) * side >= 0
            if cur_in != ((prev[axis] - bound) * side >= 0):
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])]
                cross[axis] = bound
                clipped.append(tuple(cross))
            if cur_in:
                clipped.append(cur)
        pts = clipped
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)
