"""YOLO segmentation labels (Ultralytics, Roboflow) → VOC-style class and instance masks.

Conventions (Ultralytics' own, which Roboflow's YOLO export follows)
--------------------------------------------------------------------
* Layout: every image under a folder named ``images`` has its labels in the file at the same place
  with that ``images`` replaced by ``labels`` and the extension by ``.txt``, the rule Ultralytics uses
  (``images/train/a.jpg`` → ``labels/train/a.txt``; Roboflow's ``train/images/a.jpg`` →
  ``train/labels/a.txt``). The folder beside ``images`` (``images/train``, ``valid/images``) names the
  split; when every image has one, ``ImageSets/Segmentation/{train,val,test}.txt`` list them. Of
  ``data.yaml`` only ``names`` and ``nc`` are read: the images are those under SRC, wherever its
  ``train`` / ``val`` paths point (Roboflow's ``../train/images`` among them).
* Classes: ``names`` in ``data.yaml`` (a list, or a mapping from class id), class id k → class k+1
  after ``background``; a name ``background`` / ``_background_`` is class 0 instead, and a name
  ``__ignore__`` marks ignore regions (255). ``nc``, when given, must equal the number of names.
* Each line is ``class x1 y1 x2 y2 ...``: one instance, a polygon of at least 3 points normalised to the
  image's width and height. Lines are drawn in file order, each over the ones before, so where two
  instances overlap the later line wins. A line of 5 values is a detection box (class cx cy w h), not a
  polygon, and is refused. Coordinates may stray 1% outside 0..1, as Ultralytics allows (the overhang is
  clipped); beyond that the file is refused as not normalised.
* Pixels are those of Ultralytics' ``polygon2mask``: points scaled to pixels in float32, truncated to
  ints, filled by OpenCV's ``fillPoly`` (which includes the edge pixels).
* An image without a label file is background only, as Ultralytics trains on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from tqdm.auto import tqdm

from masksmith.data.convert.class_table import class_table
from masksmith.data.convert.common import (
    ConvertReport,
    claim_stem,
    open_output,
    read_photo,
    write_image_sets,
    write_sample,
)
from masksmith.data.convert.paint import Region, paint
from masksmith.data.discover import SPLIT_DIR_NAMES, is_image_file
from masksmith.errors import DataError, MasksmithError
from masksmith.visualize import default_colors

__all__ = ["MAX_LABEL_FILE_BYTES", "convert_yolo", "yolo_classes"]

# One image's label file; a polygon of a million points is about 18 MB of text.
MAX_LABEL_FILE_BYTES = 32 * 2**20
# Ultralytics accepts coordinates up to 1% outside 0..1 (verify_image_label); so does this reader.
COORDINATE_SLACK = 0.01
_YAML_NAMES = ("data.yaml", "data.yml")
_MAX_YAML_BYTES = 2**20


def _find_yaml(src_dir: Path) -> Path:
    for name in _YAML_NAMES:
        if (src_dir / name).is_file():
            return src_dir / name
    found = sorted(p for p in src_dir.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{src_dir}: no data.yaml (the class names) in this folder; give it with --data")
    raise DataError(f"{src_dir}: {len(found)} YAML files and none is data.yaml; give the dataset's with --data")


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > _MAX_YAML_BYTES:
            raise DataError(f"{path}: {path.stat().st_size} bytes is too large for a dataset YAML (names and paths)")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: dataset YAML not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text (UTF-8) file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read dataset YAML: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise DataError(f"{path}: invalid YAML: {problem}{at}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a YOLO dataset YAML (top level is a {type(data).__name__}, not a mapping)")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def yolo_classes(data: dict[str, Any], where: str) -> tuple[list[str], dict[int, int]]:
    """Class names (background first) and YOLO class id → class index from a data.yaml mapping."""
    names = data.get("names")
    if isinstance(names, list):
        entries = list(enumerate(names))
    elif isinstance(names, dict):
        entries = sorted(names.items(), key=lambda item: item[0] if _is_int(item[0]) else -1)
    else:
        raise DataError(f"{where}: 'names' must be a list of class names or a mapping id: name, "
                        f"got {type(names).__name__}")
    if not entries:
        raise DataError(f"{where}: 'names' is empty")
    checked = []
    for key, name in entries:
        if not _is_int(key) or key < 0:
            raise DataError(f"{where}: class id {key!r} in 'names' is not a non-negative integer")
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise DataError(f"{where}: class {key} has a name that is not text: {name!r}")
        checked.append((key, str(name)))
    count = data.get("nc")
    if count is not None and count != len(checked):
        raise DataError(f"{where}: nc is {count!r} but 'names' lists {len(checked)} classes")
    return class_table(checked, where)


def _label_path(src_dir: Path, image: Path) -> tuple[Path, str | None] | None:
    """The label file of an image under an `images` folder and its split (None when none is named)."""
    parts = image.relative_to(src_dir).parts
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if not folders:
        return None
    at = folders[-1]  # Ultralytics replaces the last /images/ of the path
    label = src_dir.joinpath(*parts[:at], "labels", *parts[at + 1:]).with_suffix(".txt")
    # images/<split>/a.jpg (Ultralytics) or <split>/images/a.jpg (Roboflow)
    around = [parts[at + 1]] if at + 2 < len(parts) else []
    around += [parts[at - 1]] if at > 0 else []
    split = next((key for name in around for key, names in SPLIT_DIR_NAMES.items() if name.lower() in names), None)
    return label, split


def _parse_line(where: str, number: int, line: str, class_index: dict[int, int]) -> tuple[int, np.ndarray]:
    """One label line → (class index, [N, 2] float32 normalised points); DataError naming the line."""
    at = f"{where}: line {number}"
    tokens = line.split()
    if len(tokens) == 5:
        raise DataError(f"{at}: 5 values are a detection box (class cx cy w h), not a polygon: "
                        "this looks like a YOLO detection dataset")
    try:
        # float32 as Ultralytics parses them: the same rounding, so the same pixels.
        values = np.array(tokens, dtype=np.float32)
    except ValueError:
        bad = next(t for t in tokens if not _parses(t))
        raise DataError(f"{at}: {bad[:40]!r} is not a number") from None
    if not np.isfinite(values).all():
        raise DataError(f"{at}: holds a value that is not a finite number (nan or inf)")
    cls, coords = values[0], values[1:]
    if cls % 1 or int(cls) not in class_index:
        known = f"0..{max(class_index)}" if class_index else "none"
        raise DataError(f"{at}: class id {tokens[0]} is not in the dataset's names (ids {known})")
    if len(coords) % 2:
        raise DataError(f"{at}: an odd number of coordinates ({len(coords)}); a polygon is x y pairs")
    if len(coords) < 6:
        raise DataError(f"{at}: a polygon of {len(coords) // 2} point(s); it needs at least 3")
    low, high = float(coords.min()), float(coords.max())
    if low < -COORDINATE_SLACK or high > 1 + COORDINATE_SLACK:
        worst = high if high > 1 + COORDINATE_SLACK else low
        raise DataError(f"{at}: coordinate {worst:g} is outside 0..1; YOLO coordinates are normalised to the "
                        "image size (pixel coordinates?)")
    return class_index[int(cls)], coords.reshape(-1, 2)


def _parses(token: str) -> bool:
    try:
        np.float32(token)
    except ValueError:
        return False
    return True


def read_label_file(path: Path, class_index: dict[int, int]) -> list[tuple[int, np.ndarray]]:
    """The (class index, normalised points) of every line of a label file; a missing file is no lines."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DataError(f"{path}: cannot read label file: {exc.strerror or exc}") from None
    if size > MAX_LABEL_FILE_BYTES:
        raise DataError(f"{path}: label file is {size / 2**20:.1f} MiB, over the limit of "
                        f"{MAX_LABEL_FILE_BYTES / 2**20:.0f} MiB for one image's labels")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text (UTF-8) file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read label file: {exc.strerror or exc}") from None
    return [_parse_line(str(path), number, line, class_index)
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def polygon_pixels(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised [N, 2] float32 points → HxW bool mask, as Ultralytics' polygon2mask fills them."""
    scaled = points * np.array([width, height], dtype=np.float32)
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [scaled.astype(np.int32)], 1)
    return mask.astype(bool)


def _images(src_dir: Path) -> list[tuple[Path, Path, str | None]]:
    """(image, label file, split) of every image under an `images` folder, sorted by path."""
    found = []
    for path in sorted(src_dir.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(src_dir).parts) or not is_image_file(path):
            continue
        located = _label_path(src_dir, path)
        if located is not None:
            found.append((path, *located))
    return found


def _orphan_labels(src_dir: Path, images: list[tuple[Path, Path, str | None]]) -> list[Path]:
    """Label files under a `labels` folder that no image has: their image is missing."""
    expected = {label for _, label, _ in images}
    found = []
    for path in sorted(src_dir.rglob("*.txt")):
        parts = path.relative_to(src_dir).parts
        if "labels" in parts[:-1] and not any(p.startswith(".") for p in parts) and path not in expected:
            found.append(path)
    return found


def convert_yolo(
    src_dir: str | Path,
    out_dir: str | Path,
    data_yaml: str | Path | None = None,
    *,
    instances: bool = True,
    visualize: bool = True,
    progress: bool = True,
) -> ConvertReport:
    """Convert a YOLO segmentation dataset (images/ + labels/ + data.yaml) into a VOC-style dataset in `out_dir`."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise DataError(f"{src_dir}: not a folder")
    yaml_path = Path(data_yaml) if data_yaml is not None else _find_yaml(src_dir)
    classes, class_index = yolo_classes(_load_yaml(yaml_path), str(yaml_path))
    images = _images(src_dir)
    if not images:
        raise DataError(f"{src_dir}: no images in an images/ folder (YOLO keeps them in images/ and the labels "
                        "in labels/ beside it)")
    if not any(label.is_file() for _, label, _ in images):
        raise DataError(f"{src_dir}: no label files beside the images (looked for {images[0][1]} and the like)")

    sources = [yaml_path] + [p for image, label, _ in images for p in (image, label) if p.is_file()]
    open_output(out_dir, src_dir, sources, list(dict.fromkeys(i.stem for i, _, _ in images)), classes,
                visualize=visualize, objects=instances)
    colors = default_colors(len(classes))
    report = ConvertReport(class_names=list(classes))
    for label_path in _orphan_labels(src_dir, images):
        report.failed.append((label_path, f"{label_path}: no image for this label file (looked for "
                                          f"{label_path.stem}.* under the images/ folder beside it)"))
    stems: dict[str, str] = {}
    splits: dict[str, list[str]] = {}
    for image_path, label_path, split in tqdm(images, desc="converting yolo", unit="img", disable=not progress):
        where = str(label_path if label_path.is_file() else image_path)
        try:
            claim_stem(stems, image_path.stem, str(image_path.relative_to(src_dir)), where)
            lines = read_label_file(label_path, class_index)
            image = read_photo(where, image_path)
            height, width = image.shape[:2]
            regions = [Region(cls, None, lambda pts=pts: polygon_pixels(pts, height, width)) for cls, pts in lines]
            class_mask, object_mask = paint(where, (height, width), regions, instances=instances)
            write_sample(out_dir, image_path.stem, image, image_path, class_mask, colors, object_mask, visualize)
        except MasksmithError as exc:
            report.failed.append((Path(where), str(exc)))
            continue
        report.written.append(image_path.stem)
        if split is not None:
            splits.setdefault(split, []).append(image_path.stem)
    if all(split is not None for _, _, split in images):
        write_image_sets(out_dir, splits)
    return report
