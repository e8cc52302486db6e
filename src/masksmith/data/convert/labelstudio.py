"""Label Studio JSON export (polygon and brush labels) → VOC-style class and instance masks.

Conventions
-----------
* The file is Label Studio's "JSON" export: a list of tasks, each with its ``data`` (the image URL)
  and ``annotations``. One annotation per task is converted: cancelled ones are skipped, then the one
  marked ``ground_truth`` is taken, else the last (the most recent). Predictions are not annotations.
* Regions: ``polygonlabels`` (points in percent of the image's width and height) and ``brushlabels``
  (Label Studio's brush RLE, see :mod:`masksmith.data.convert.labelstudio_rle`); the unlabelled
  ``polygon`` / ``brush`` kinds take their label from the ``labels`` result of the same region id.
  Other results (rectangles, key points, choices, text) are not areas and are skipped. Regions are
  drawn in the order of ``result``, the order they were made in, each over the ones before; each is
  an instance of its own. Polygons are filled with pycocotools, as Label Studio's COCO export is read.
* Classes: the labels of ``--labels`` (one a line, in that order), else every label used, sorted;
  ``background`` is class 0 (added when not listed) and ``__ignore__`` marks ignore regions (255).
* The image: ``data.image`` (or the only text field of ``data``) is a URL; its file is looked for
  under IMAGES by the path Label Studio's local-files URL (``?d=``) gives, then by the URL's file name,
  then by that name without the 8-character prefix Label Studio adds to uploads (``1a2b3c4d-photo.jpg``),
  and the same for ``file_upload``. ``original_width`` / ``original_height`` must be the image's size.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from tqdm.auto import tqdm

from masksmith.data.convert.class_table import class_table, read_label_lines
from masksmith.data.convert.common import (
    ConvertReport,
    claim_stem,
    open_output,
    read_photo,
    write_sample,
)
from masksmith.data.convert.labelstudio_rle import decode_brush
from masksmith.data.convert.nesting import load_json_file
from masksmith.data.convert.paint import Region, paint
from masksmith.data.convert.polygons import fill_polygons
from masksmith.errors import DataError, MasksmithError
from masksmith.visualize import default_colors

__all__ = ["MAX_EXPORT_BYTES", "convert_labelstudio"]

# json.loads holds a file several times over in memory; a project export beyond this is split first.
MAX_EXPORT_BYTES = 2**30
POLYGON_TYPES = ("polygonlabels", "polygon")
BRUSH_TYPES = ("brushlabels", "brush")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


def _annotation(where: str, task: dict[str, Any]) -> list[Any]:
    """The `result` list of the task's annotation to convert (ground truth, else the last not cancelled)."""
    annotations = task.get("annotations")
    if not isinstance(annotations, list):
        raise DataError(f"{where}: no 'annotations' list (a Label Studio JSON export, not JSON-MIN, is needed)")
    kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not kept:
        return []
    chosen = next((a for a in kept if a.get("ground_truth") is True), kept[-1])
    result = chosen.get("result")
    if not isinstance(result, list):
        raise DataError(f"{where}: annotation {chosen.get('id', '?')} has no 'result' list")
    return result


def _region_label(where: str, result: dict[str, Any], labels_by_id: dict[Any, list[Any]]) -> str:
    value = result.get("value") if isinstance(result.get("value"), dict) else {}
    kind = result["type"]
    names = value.get(kind) if kind.endswith("labels") else labels_by_id.get(result.get("id"))
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: {kind} region {result.get('id', '?')} has no label")
    if len(names) > 1:
        raise DataError(f"{where}: {kind} region {result.get('id', '?')} has {len(names)} labels {names}; "
                        "a pixel of a mask holds one class")
    return names[0]


def _regions(where: str, results: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, result) of every polygon and brush region, in order; other result types are left out."""
    labels_by_id = {r.get("id"): r.get("value", {}).get("labels") for r in results
                    if isinstance(r, dict) and r.get("type") == "labels" and isinstance(r.get("value"), dict)}
    regions = []
    for number, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("type"), str):
            raise DataError(f"{where}: result {number} is not an object with a 'type'")
        if result["type"] in POLYGON_TYPES + BRUSH_TYPES:
            regions.append((_region_label(where, result, labels_by_id), result))
    return regions


def _finite_pair(point: Any) -> bool:
    # bool is an int in Python, but true/false as a coordinate is a broken file, not 1/0.
    return (isinstance(point, list) and len(point) == 2
            and all(type(v) in (int, float) and math.isfinite(v) for v in point))


def _polygon(where: str, value: dict[str, Any], height: int, width: int) -> np.ndarray:
    points = value.get("points")
    if not isinstance(points, list):
        raise DataError(f"{where}: polygon has no 'points' list")
    bad = next((point for point in points if not _finite_pair(point)), None)
    if bad is not None:
        raise DataError(f"{where}: polygon point {json.dumps(bad)[:40]} is not two finite numbers (percent x, y)")
    if len(points) < 3:
        raise DataError(f"{where}: a polygon of {len(points)} point(s); it needs at least 3")
    # Percent of the image size, scaled in the order Label Studio's COCO export scales them (x / 100 * w),
    # so the two agree to the last bit.
    pixels = np.array(points, dtype=np.float64) / 100 * np.array([width, height], dtype=np.float64)
    return fill_polygons([pixels], height, width)


def _brush(where: str, value: dict[str, Any], height: int, width: int) -> np.ndarray:
    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        raise DataError(f"{where}: brush region has no 'rle' list (format {value.get('format')!r})")
    try:
        return decode_brush(value["rle"], height, width)
    except ValueError as exc:
        raise DataError(f"{where}: broken brush RLE: {exc}") from None


def _pixels(where: str, result: dict[str, Any], height: int, width: int) -> np.ndarray:
    at = f"{where}: {result['type']} region {result.get('id', '?')}"
    value = result.get("value")
    if not isinstance(value, dict):
        raise DataError(f"{at} has no 'value' object")
    if result["type"] in POLYGON_TYPES:
        return _polygon(at, value, height, width)
    return _brush(at, value, height, width)


def _check_size(where: str, results: list[tuple[str, dict[str, Any]]], height: int, width: int) -> None:
    for _, result in results:
        stated = (result.get("original_width"), result.get("original_height"))
        if stated != (None, None) and stated != (width, height):
            raise DataError(f"{where}: the annotation was made on a {stated[0]}x{stated[1]} image but the image "
                            f"file is {width}x{height} (WxH)")
        if result.get("image_rotation") not in (None, 0):
            raise DataError(f"{where}: the image was rotated by {result['image_rotation']} degrees in the "
                            "editor; rotated annotations are not supported")


def _image_url(where: str, task: dict[str, Any]) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{where}: no 'data' object (the task's image)")
    if isinstance(data.get("image"), str):
        return data["image"]
    texts = [v for v in data.values() if isinstance(v, str)]
    if len(texts) != 1:
        raise DataError(f"{where}: 'data' has no 'image' field and {len(texts)} text fields; cannot tell which "
                        "is the image")
    return texts[0]


def _candidates(url: str) -> list[str]:
    """Relative paths the file behind a Label Studio URL may have in IMAGES, most specific first."""
    parts = urlsplit(url)
    local = parse_qs(parts.query).get("d")  # /data/local-files/?d=folder/photo.jpg
    path = local[0] if local else unquote(parts.path)
    names = [path.lstrip("/")] if local else []
    name = PurePosixPath(path).name
    if name:
        names.append(name)
        upload = _UPLOAD_PREFIX.match(name)
        if upload:
            names.append(upload.group(1))
    return [n for n in dict.fromkeys(names) if n]


def _find_image(where: str, images_dir: Path, task: dict[str, Any]) -> Path:
    url = _image_url(where, task)
    names = _candidates(url)
    if isinstance(task.get("file_upload"), str):
        names += [n for n in _candidates(task["file_upload"]) if n not in names]
    root = images_dir.resolve()
    for name in names:
        candidate = images_dir / name
        # A URL names a file under IMAGES, never one elsewhere on this machine.
        if candidate.resolve().is_relative_to(root) and candidate.is_file():
            return candidate
    looked = ", ".join(names) if names else "no file name in it"
    raise DataError(f"{where}: image not found in {images_dir} for {url[:80]!r} (looked for {looked})")


def _read_labels(path: Path) -> list[str]:
    names = read_label_lines(path)
    if not names:
        raise DataError(f"{path}: labels file lists no labels")
    return names


def _task_where(export: Path, number: int, task: Any) -> str:
    ident = task.get("id") if isinstance(task, dict) else None
    return f"{export}: task {ident if ident is not None else f'#{number}'}"


def convert_labelstudio(
    export: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    labels: str | Path | None = None,
    *,
    instances: bool = True,
    visualize: bool = True,
    progress: bool = True,
) -> ConvertReport:
    """Convert a Label Studio JSON export and its images into a VOC-style dataset in `out_dir`."""
    export, images_dir, out_dir = Path(export), Path(images_dir), Path(out_dir)
    tasks = load_json_file(export, "Label Studio export", MAX_EXPORT_BYTES)
    if not isinstance(tasks, list):
        raise DataError(f"{export}: not a Label Studio JSON export (top level is a {type(tasks).__name__}, "
                        "not a list of tasks)")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found")

    # First pass: the labels in use and the image files (what is broken is reported in the second).
    found: set[str] = set()
    sources = [export]
    stems: list[str] = []
    for number, task in enumerate(tasks):
        where = _task_where(export, number, task)
        try:
            if not isinstance(task, dict):
                raise DataError(f"{where}: not an object")
            found.update(label for label, _ in _regions(where, _annotation(where, task)))
            image = _find_image(where, images_dir, task)
        except DataError:
            continue
        sources.append(image)
        stems.append(image.stem)
    if labels is not None:
        names = _read_labels(Path(labels))
        sources.append(Path(labels))
        labels_source = str(labels)
    else:
        names = sorted(found)
        labels_source = "the labels used"
    classes, class_index = class_table([(name, name) for name in names], labels_source)
    open_output(out_dir, images_dir, sources, list(dict.fromkeys(stems)), classes, visualize=visualize,
                objects=instances)
    colors = default_colors(len(classes))
    report = ConvertReport(class_names=list(classes))
    claimed: dict[str, str] = {}
    for number, task in enumerate(tqdm(tasks, desc="converting label studio", unit="task", disable=not progress)):
        where = _task_where(export, number, task)
        try:
            if not isinstance(task, dict):
                raise DataError(f"{where}: not an object")
            regions = _regions(where, _annotation(where, task))
            for label, _ in regions:
                if label not in class_index:
                    raise DataError(f"{where}: label {label!r} is not in {labels_source}")
            path = _find_image(where, images_dir, task)
            where = f"{where} ({path.name})"
            claim_stem(claimed, path.stem, path.name, where)
            image = read_photo(where, path)
            height, width = image.shape[:2]
            _check_size(where, regions, height, width)
            painted = [Region(class_index[label], None, lambda r=result: _pixels(where, r, height, width))
                       for label, result in regions]
            class_mask, object_mask = paint(where, (height, width), painted, instances=instances)
            write_sample(out_dir, path.stem, image, path, class_mask, colors, object_mask, visualize)
        except MasksmithError as exc:
            report.failed.append((export, str(exc)))
            continue
        report.written.append(path.stem)
    return report
