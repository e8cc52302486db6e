"""Labelme JSON annotations → VOC-style class and instance masks, as Labelme's own ``labelme2voc.py``.

Conventions (the same as Labelme's, so its example outputs are reproduced pixel for pixel)
-----------------------------------------------------------------------------------------
* ``labels.txt``: one label per line. ``__ignore__`` → 255 (ignore), ``_background_`` → 0, every
  other label → 1, 2, ... in file order. With the usual file (``__ignore__`` first, then
  ``_background_``) a class index is the line position minus 1, as in Labelme. Blank lines are skipped;
  a file without ``_background_`` gets it added at index 0. Without a labels file the classes are
  ``_background_`` followed by every label found in the JSON files, sorted.
* Shapes are drawn in file order, each over the ones before, the way Labelme draws them with PIL:
  polygon, rectangle (two corners, both inclusive), circle (centre + a point on the circle),
  line / linestrip ``LINE_WIDTH`` pixels wide, point as a disc of radius ``POINT_SIZE``, and ``mask``
  (a base64 PNG placed at the box given by its two points, both corners inclusive). Polygons, lines
  and rectangles use our own copy of Pillow 9's fill rule, so the masks do not change with the
  installed Pillow (see `masksmith.data.convert.labelme_raster`); circles and points use Pillow's ellipse.
* Instances: shapes with the same ``(label, group_id)`` are one instance; a shape without
  ``group_id`` is an instance of its own. Ids are given in order of first appearance, counting
  ``__ignore__`` shapes too, so ids can have gaps (Labelme numbers them the same way). In the instance
  mask, pixels whose class is ignore or background are 0, again as Labelme writes them.
* ``SegmentationObject`` is written for every file of a run when ``instances`` is on and at least
  one shape of the run has a ``group_id`` (a run is either a semantic or an instance dataset).
* The image is ``imageData`` (embedded base64) when present, else ``imagePath`` relative to the JSON's
  folder (``..`` allowed); if that file is missing, the same file name beside the JSON is tried, so a
  moved dataset still converts. Coordinates outside the image are clipped; shapes never crash a run.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from masksmith.data.classes import class_name_problem, validate_class_names
from masksmith.data.convert.class_table import IGNORE_LABEL, read_label_lines
from masksmith.data.convert.common import (
    ConvertReport,
    open_output,
    write_sample,
)
from masksmith.data.convert.labelme_raster import LINE_WIDTH, POINT_SIZE, SHAPE_TYPES, shape_to_mask
from masksmith.data.convert.nesting import load_json_file
from masksmith.data.convert.paint import MAX_INSTANCE_ID
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MAX_CLASSES
from masksmith.data.images import read_image
from masksmith.data.limits import open_image
from masksmith.errors import ConfigError, DataError, MasksmithError
from masksmith.visualize import default_colors

__all__ = ["LINE_WIDTH", "POINT_SIZE", "SHAPE_TYPES", "convert_labelme", "read_labels", "shape_to_mask"]

BACKGROUND_LABEL = "_background_"


@dataclass(frozen=True)
class _Shape:
    label: str
    group_id: Hashable | None
    shape_type: str
    points: np.ndarray  # [N, 2] float64 (x, y)
    mask: np.ndarray | None  # bool, only for shape_type "mask"


# --------------------------------------------------------------------------- labels


def read_labels(labels: str | Path | Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Parse a labels.txt (path) or a list of labels into (class names, label → class index)."""
    if isinstance(labels, (str, Path)):
        lines, where = read_label_lines(Path(labels)), str(labels)
    elif isinstance(labels, Sequence) and all(isinstance(name, str) for name in labels):
        lines, where = list(labels), "labels"
    else:
        raise ConfigError(f"labels must be a labels.txt path or a list of strings, got {labels!r}")
    names = validate_class_names([line.strip() for line in lines if line.strip()], where)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{where}: label {name!r} is listed twice")
        seen.add(name)
    classes = [BACKGROUND_LABEL] + [n for n in names if n not in (IGNORE_LABEL, BACKGROUND_LABEL)]
    if len(classes) < 2:
        raise DataError(f"{where}: no class labels (only {IGNORE_LABEL!r}/{BACKGROUND_LABEL!r} or empty)")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{where}: {len(classes)} classes do not fit 8-bit masks (at most {MAX_CLASSES}, "
                        f"because {DEFAULT_IGNORE_INDEX} means ignore)")
    index = {name: i for i, name in enumerate(classes)}
    index[IGNORE_LABEL] = DEFAULT_IGNORE_INDEX
    return classes, index


# --------------------------------------------------------------------------- reading a Labelme file


def _fail(json_path: Path, message: str) -> DataError:
    return DataError(f"{json_path}: {message}")


def _load_json(json_path: Path) -> dict[str, Any]:
    """Parse a Labelme JSON file and check that it is an annotation (a dict with a 'shapes' list)."""
    data = load_json_file(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        got = "no 'shapes' list" if isinstance(data, dict) else f"top level is a {type(data).__name__}"
        raise _fail(json_path, f"not a Labelme annotation ({got})")
    return data


def _number(value: Any) -> float | None:
    # bool is an int in Python, but true/false as a coordinate is a broken file, not 1/0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _parse_shape(json_path: Path, number: int, shape: Any) -> _Shape:
    """Validate one entry of 'shapes' and return it normalized."""
    where = f"shape {number}"
    if not isinstance(shape, dict):
        raise _fail(json_path, f"{where} is not an object")
    label = shape.get("label")
    if not isinstance(label, str):
        raise _fail(json_path, f"{where} has no text 'label'")
    if (problem := class_name_problem(label)) is not None:
        raise _fail(json_path, f"{where}: {problem}")
    where = f"shape {number} ({label!r})"
    shape_type = shape.get("shape_type") or "polygon"  # Labelme's default, and old files omit it
    if not isinstance(shape_type, str) or shape_type not in SHAPE_TYPES:
        raise _fail(json_path, f"{where} has unknown shape_type {shape_type!r} "
                               f"(known: {', '.join(SHAPE_TYPES)})")
    group_id = shape.get("group_id")
    if group_id is not None and not isinstance(group_id, (int, float, str)):
        raise _fail(json_path, f"{where} has a group_id that is not a number or text: {group_id!r}")
    points = shape.get("points")
    if not isinstance(points, list):
        raise _fail(json_path, f"{where} has no 'points' list")
    coords = []
    for point in points:
        xy = [_number(v) for v in point] if isinstance(point, (list, tuple)) and len(point) == 2 else [None]
        if None in xy:
            shown = json.dumps(point, default=repr)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise _fail(json_path, f"{where} has a point that is not two finite numbers: {shown}")
        coords.append(xy)
    low, high = SHAPE_TYPES[shape_type]
    if len(coords) < low or (high is not None and len(coords) > high):
        needs = f"exactly {low}" if low == high else f"at least {low}"
        raise _fail(json_path, f"{where}: a {shape_type} needs {needs} points, got {len(coords)}")
    mask = _decode_shape_mask(json_path, where, shape.get("mask")) if shape_type == "mask" else None
    return _Shape(label, group_id, shape_type, np.asarray(coords, dtype=np.float64).reshape(-1, 2), mask)


def _decode_b64_image(text: Any) -> tuple[Image.Image, bytes]:
    """Decode a base64-encoded image file into a loaded PIL image and its bytes (ValueError when broken)."""
    if not isinstance(text, str):
        raise ValueError("it is not a base64 text")  # noqa: TRY004 - callers report every bad value alike
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # Some writers wrap the text in lines; accept whitespace, nothing else.
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"broken base64 ({exc})") from None
    try:
        with open_image(io.BytesIO(raw), "embedded image", where="imageData") as image:  # bombs refused first
            image.load()
    except UnidentifiedImageError:
        raise ValueError("decoded bytes are not an image (unknown format)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for undecodable data
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"decoded bytes are not an image ({reason})") from None
    return image, raw


def _decode_shape_mask(json_path: Path, where: str, text: Any) -> np.ndarray:
    try:
        image, _ = _decode_b64_image(text)
    except ValueError as exc:
        raise _fail(json_path, f"{where}: bad 'mask': {exc}") from None
    if image.mode in ("1", "L", "P", "I", "I;16", "F"):
        return np.asarray(image) != 0
    # Any colour channel set counts; alpha alone does not mark a pixel.
    return np.asarray(image.convert("RGB")).any(axis=2)


def _load_image(json_path: Path, data: dict[str, Any]) -> tuple[np.ndarray, bytes | Path]:
    """The annotated image as HxWx3 uint8, and its source (bytes or file) for JPEGImages."""
    image_data = data.get("imageData")
    if image_data:  # embedded data wins: it is what Labelme shows and annotates
        try:
            image, raw = _decode_b64_image(image_data)
        except ValueError as exc:
            raise _fail(json_path, f"bad imageData: {exc}") from None
        image = ImageOps.exif_transpose(image)
        return np.ascontiguousarray(np.asarray(image.convert("RGB")), dtype=np.uint8), raw
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path.strip():
        raise _fail(json_path, "has neither imageData nor an imagePath")
    path = _find_image(json_path, image_path)
    try:
        return read_image(path, channels=3), path
    except MasksmithError as exc:
        raise _fail(json_path, f"imagePath {image_path!r}: {exc}") from None


def _find_image(json_path: Path, image_path: str) -> Path:
    # Labelme on Windows writes backslashes; the file name beside the JSON covers a moved dataset.
    relative = Path(image_path.replace("\\", "/"))
    candidates = [json_path.parent / relative, json_path.parent / relative.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise _fail(json_path, f"image not found: imagePath {image_path!r} (looked for {candidates[0]}"
                           + (f" and {candidates[1]})" if candidates[1] != candidates[0] else ")"))



def _masks(json_path: Path, size: tuple[int, int], shapes: list[_Shape], label_index: dict[str, int],
           labels_source: str, objects_wanted: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Class mask and instance mask (None unless wanted) of one image: shapes in file order, later over earlier."""
    classes = np.zeros(size, dtype=np.uint8)
    objects = np.zeros(size, dtype=np.int32)
    instances: dict[tuple[str, Hashable], int] = {}
    for number, shape in enumerate(shapes):
        if shape.label not in label_index:
            raise _fail(json_path, f"shape {number} has label {shape.label!r}, which is not in {labels_source}")
        # A shape without group_id is its own instance: key it by its position, which no group_id equals.
        key = (shape.label, ("group", shape.group_id) if shape.group_id is not None else ("shape", number))
        instance = instances.setdefault(key, len(instances) + 1)
        try:
            region = shape_to_mask(size, shape.shape_type, shape.points, shape.mask)
        except ValueError as exc:
            raise _fail(json_path, f"shape {number} ({shape.label!r}): {exc}") from None
        classes[region] = label_index[shape.label]
        objects[region] = instance
    # Labelme's instance masks are 0 wherever the class is ignore; background is no instance either.
    objects[(classes == DEFAULT_IGNORE_INDEX) | (classes == 0)] = 0
    if not objects_wanted:
        return classes, None  # a semantic dataset: any number of regions, e.g. a prediction's thousand specks
    if objects.max(initial=0) > MAX_INSTANCE_ID:
        raise _fail(json_path, f"{int(objects.max())} instances do not fit an 8-bit mask (at most {MAX_INSTANCE_ID})")
    return classes, objects.astype(np.uint8)


def _read_annotation(json_path: Path) -> tuple[dict[str, Any], list[_Shape]]:
    data = _load_json(json_path)
    shapes = [_parse_shape(json_path, number, shape) for number, shape in enumerate(data["shapes"])]
    return data, shapes


def _scan(json_paths: list[Path]) -> tuple[set[str], bool, list[Path]]:
    """Labels used, whether any shape has a group_id, and the image files read; bad files are reported later."""
    labels: set[str] = set()
    grouped = False
    images: list[Path] = []
    for path in json_paths:
        try:
            data = _load_json(path)
        except DataError:
            continue
        image_path = data.get("imagePath")
        if not data.get("imageData") and isinstance(image_path, str) and image_path.strip():
            try:
                images.append(_find_image(path, image_path))
            except DataError:
                pass  # the conversion itself reports the missing image
        for shape in data["shapes"]:
            if isinstance(shape, dict):
                if class_name_problem(shape.get("label")) is None:  # a bad label fails its own file only
                    labels.add(shape["label"])
                grouped |= shape.get("group_id") is not None
    return labels, grouped, images


def convert_labelme(
    src_dir: str | Path,
    out_dir: str | Path,
    labels: str | Path | list[str] | None = None,
    *,
    instances: bool = True,
    visualize: bool = True,
    progress: bool = True,
) -> ConvertReport:
    """Convert every Labelme ``*.json`` in `src_dir` (hidden files left out) into a VOC-style dataset in `out_dir`."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise DataError(f"{src_dir}: not a folder")
    # Hidden files are no annotations (macOS's ._name.json, predict's .masksmith-predict.json).
    json_paths = sorted(path for path in src_dir.glob("*.json") if path.is_file() and not path.name.startswith("."))
    if not json_paths:
        raise DataError(f"{src_dir}: no Labelme *.json files in this folder")
    found, grouped, images = _scan(json_paths)
    if labels is None:
        classes = [BACKGROUND_LABEL] + sorted(found - {IGNORE_LABEL, BACKGROUND_LABEL})
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{src_dir}: {len(classes)} labels do not fit 8-bit masks (at most {MAX_CLASSES})")
        label_index = {name: i for i, name in enumerate(classes)} | {IGNORE_LABEL: DEFAULT_IGNORE_INDEX}
        labels_source = "the labels list"
    else:
        classes, label_index = read_labels(labels)
        labels_source = str(labels) if isinstance(labels, (str, Path)) else "the labels list"
    colors = default_colors(len(classes))
    write_objects = instances and grouped

    inputs = json_paths + images + ([Path(labels)] if isinstance(labels, (str, Path)) else [])
    open_output(out_dir, src_dir, inputs, [p.stem for p in json_paths], classes, visualize=visualize,
                objects=write_objects)
    report = ConvertReport(class_names=list(classes))
    for json_path in tqdm(json_paths, desc="converting labelme", unit="file", disable=not progress):
        try:
            data, shapes = _read_annotation(json_path)
            image, source = _load_image(json_path, data)
            height, width = image.shape[:2]
            for key, actual in (("imageHeight", height), ("imageWidth", width)):
                stated = data.get(key)
                if stated is not None and stated != actual:
                    raise _fail(json_path, f"{key} is {stated!r} but the image is {width}x{height} (WxH)")
            class_mask, object_mask = _masks(json_path, (height, width), shapes, label_index, labels_source,
                                             write_objects)
            write_sample(out_dir, json_path.stem, image, source, class_mask, colors, object_mask, visualize)
        except MasksmithError as exc:
            report.failed.append((json_path, str(exc)))
            continue
        report.written.append(json_path.stem)
    return report
