"""COCO instance annotations → VOC-style class and instance masks (polygons, RLE and compressed RLE).

Conventions
-----------
* Classes: a category named ``_background_`` / ``background`` / ``__background__`` (any case)
  becomes class 0 under its own name; otherwise ``background`` is added as class 0. The other
  categories get 1, 2, ... in order of category id, names kept; ``class_names.txt`` lists them.
* Drawing order: annotations are drawn in file order, each over the ones before. Annotation tools
  (Labelme, CVAT) write shapes in the order they were drawn, so file order reproduces what the
  annotator saw; drawing by decreasing area instead moved 94 more pixels away from Labelme's own
  masks on its example. Instance ids are 1, 2, ... in the same order.
* Crowd regions (``iscrowd: 1``) are ignore (255) in both masks, unless a non-crowd annotation
  covers the pixel: crowds are drawn first and individual objects over them, because an object
  outlined inside a crowd is the more exact statement about that pixel.
* Pixels are those of pycocotools (``frPyObjects`` / ``merge`` / ``decode``), the rasterizer COCO's
  own evaluation uses. It is half-open: a polygon from x=2 to x=6 covers columns 2..5, whereas PIL
  (and so Labelme's VOC export) also fills the last column and row, so the two differ by about one
  pixel along right and bottom edges.
* ``file_name`` is looked up under ``images_dir`` as written (sub-folders allowed), then by its
  base name directly in ``images_dir``. Output files are named by the file name's stem.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from masksmith.data.classes import class_name_problem
from masksmith.data.convert.class_table import class_table
from masksmith.data.convert.common import (
    ConvertReport,
    claim_stem,
    find_image,
    images_found,
    open_output,
    output_stem,
    read_photo,
    write_sample,
)
from masksmith.data.convert.nesting import load_json_file
from masksmith.data.convert.paint import MAX_INSTANCE_ID
from masksmith.data.convert.polygons import fill_polygons
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX
from masksmith.errors import DataError, MasksmithError
from masksmith.visualize import default_colors

__all__ = ["coco_classes", "convert_coco", "rle_counts"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _load(ann_path: Path) -> dict[str, Any]:
    """Read the annotations file and check its top-level structure (DataError naming the file)."""
    data = load_json_file(ann_path, "annotations file")
    if not isinstance(data, dict):
        raise DataError(f"{ann_path}: not a COCO annotations file (top level is a {type(data).__name__})")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise DataError(f"{ann_path}: not a COCO annotations file: no {' / '.join(repr(k) for k in missing)} list")
    return data


def coco_classes(categories: list[Any], where: str = "categories") -> tuple[list[str], dict[int, int]]:
    """Class names (background first) and category id → class index for COCO `categories`."""
    seen_ids: dict[int, str] = {}
    for number, category in enumerate(categories):
        valid = isinstance(category, dict) and _is_int(category.get("id")) and isinstance(category.get("name"), str)
        if not valid:
            raise DataError(f"{where}: category {number} needs an integer 'id' and a text 'name', got {category!r}")
        if category["id"] in seen_ids:
            raise DataError(f"{where}: category id {category['id']} is listed twice")
        if (problem := class_name_problem(category["name"])) is not None:
            raise DataError(f"{where}: category id {category['id']}: {problem}")
        seen_ids[category["id"]] = category["name"]
    # COCO's ignore is iscrowd; a category is a class whatever its name.
    return class_table(sorted(seen_ids.items()), where, ignore_label=False)


def rle_counts(counts: str | bytes) -> list[int]:
    """Decode a compressed COCO RLE string into its run lengths (ValueError when malformed)."""
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("the counts string ends in the middle of a number")
            char = ord(text[pos]) - 48
            if not 0 <= char < 64:
                raise ValueError(f"the counts string holds {text[pos]!r}, which is not an RLE character")
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            pos += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)  # sign-extend: a negative difference
        # Runs after the second are stored as the difference to the run two places back.
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _image_size(entry: dict[str, Any]) -> tuple[int, int] | None:
    height, width = entry.get("height"), entry.get("width")
    return (height, width) if _is_int(height) and _is_int(width) else None


def _decode(where: str, segmentation: Any, height: int, width: int) -> np.ndarray:
    """One annotation's segmentation (polygons, RLE or compressed RLE) as an HxW bool mask."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
            raise DataError(f"{where}: RLE needs 'size' [height, width], got {size!r}")
        if list(size) != [height, width]:
            raise DataError(f"{where}: RLE size {list(size)} does not match the image's [height, width] "
                            f"[{height}, {width}]")
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts):
                raise DataError(f"{where}: RLE counts must be non-negative integers")
            runs = counts
        elif isinstance(counts, (str, bytes)):
            try:
                runs = rle_counts(counts)
            except (ValueError, UnicodeDecodeError) as exc:
                raise DataError(f"{where}: broken compressed RLE: {exc}") from None
            if any(c < 0 for c in runs):
                raise DataError(f"{where}: broken compressed RLE: a negative run length")
        else:
            raise DataError(f"{where}: RLE 'counts' must be a list or a string, got {type(counts).__name__}")
        # pycocotools would read past its buffer on runs longer than the image; refuse them here.
        if sum(runs) != height * width:
            raise DataError(f"{where}: RLE covers {sum(runs)} pixels but the image has {height * width} "
                            f"(height {height} x width {width})")
        rle = mask_utils.frPyObjects(segmentation, height, width) if isinstance(counts, list) else \
            {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return mask_utils.decode(rle).astype(bool)
    if isinstance(segmentation, list):
        if segmentation and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in segmentation):
            segmentation = [segmentation]  # some writers give a single polygon unwrapped
        if not segmentation:
            raise DataError(f"{where}: empty segmentation (no polygon)")
        polygons = []
        for number, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon):
                raise DataError(f"{where}: polygon {number} is not a list of finite numbers")
            if len(polygon) % 2:
                raise DataError(f"{where}: polygon {number} has an odd number of coordinates ({len(polygon)})")
            if len(polygon) < 6:
                raise DataError(f"{where}: polygon {number} has {len(polygon) // 2} points, needs at least 3")
            polygons.append(np.asarray(polygon, dtype=np.float64).reshape(-1, 2))
        return fill_polygons(polygons, height, width)
    raise DataError(f"{where}: segmentation is neither polygons nor RLE (got {type(segmentation).__name__})")


def _masks(where: str, annotations: list[dict[str, Any]], class_index: dict[int, int],
           height: int, width: int, objects_wanted: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Class and instance masks (None unless wanted) of one image (crowds first as ignore, then objects)."""
    checked = []
    for annotation in annotations:
        at = f"{where}: annotation id {annotation.get('id', '?')}"
        category = annotation.get("category_id")
        if not _is_int(category) or category not in class_index:
            raise DataError(f"{at}: category_id {category!r} is not in 'categories'")
        crowd = annotation.get("iscrowd", 0)
        if crowd not in (0, 1, None):  # also False/True, which equal 0/1
            raise DataError(f"{at}: iscrowd must be 0 or 1, got {crowd!r}")
        checked.append((at, bool(crowd), class_index[category], annotation.get("segmentation")))
    classes = np.zeros((height, width), dtype=np.uint8)
    objects = np.zeros((height, width), dtype=np.uint8)
    # Two passes, each mask decoded only when drawn: an image's decoded masks need not all fit in memory.
    for at, crowd, _, segmentation in checked:
        if crowd:
            region = _decode(at, segmentation, height, width)
            classes[region] = DEFAULT_IGNORE_INDEX
            objects[region] = DEFAULT_IGNORE_INDEX
    instance = 0
    for at, crowd, cls, segmentation in checked:
        if crowd:
            continue
        region = _decode(at, segmentation, height, width)
        classes[region] = cls
        if cls == 0:  # a background annotation erases; it is no instance
            objects[region] = 0
            continue
        instance += 1
        if objects_wanted and instance > MAX_INSTANCE_ID:
            raise DataError(f"{where}: more than {MAX_INSTANCE_ID} instances do not fit an 8-bit mask "
                            "(convert with --no-instances for the class masks alone)")
        objects[region] = instance if objects_wanted else 0
    return classes, objects if objects_wanted else None


def convert_coco(
    annotations: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    visualize: bool = True,
    progress: bool = True,
    instances: bool = True,
) -> ConvertReport:
    """Convert a COCO instances JSON and its images into a VOC-style dataset in `out_dir`.

    Extra keys (a prediction's "score", "info") are ignored; instances=False writes no SegmentationObject/.
    """
    ann_path, images_dir, out_dir = Path(annotations), Path(images_dir), Path(out_dir)
    data = _load(ann_path)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found")
    classes, class_index = coco_classes(data["categories"], where=str(ann_path))
    colors = default_colors(len(classes))
    report = ConvertReport(class_names=list(classes))

    images: dict[Any, dict[str, Any]] = {}
    for number, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")) or not isinstance(entry.get("file_name"), str):
            message = f"{ann_path}: images[{number}] needs an integer 'id' and a text 'file_name'"
            report.failed.append((ann_path, message))
            continue
        if entry["id"] in images:
            report.failed.append((ann_path, f"{ann_path}: image id {entry['id']} is listed twice"))
            continue
        images[entry["id"]] = entry
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for number, annotation in enumerate(data["annotations"]):
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if not _is_int(image_id) or image_id not in images:
            ident = annotation.get("id", f"#{number}") if isinstance(annotation, dict) else f"#{number}"
            message = f"{ann_path}: annotation id {ident} refers to image_id {image_id!r}, which is not in 'images'"
            report.failed.append((ann_path, message))
            continue
        by_image[image_id].append(annotation)

    sources = [ann_path, *images_found(images_dir, (entry["file_name"] for entry in images.values()))]
    out_stems = list(dict.fromkeys(output_stem(entry["file_name"]) for entry in images.values()))
    open_output(out_dir, images_dir, sources, out_stems, classes, visualize=visualize, objects=instances)
    stems: dict[str, str] = {}
    for image_id, entry in tqdm(images.items(), desc="converting coco", unit="img", disable=not progress):
        file_name = entry["file_name"]
        where = f"{ann_path}: image id {image_id} ({file_name!r})"
        stem = output_stem(file_name)
        try:
            claim_stem(stems, stem, file_name, where)
            path = find_image(where, images_dir, file_name)
            image = read_photo(where, path)
            height, width = image.shape[:2]
            stated = _image_size(entry)
            if stated is not None and stated != (height, width):
                raise DataError(f"{where}: the annotations say {stated[1]}x{stated[0]} but the image is "
                                f"{width}x{height} (WxH)")
            class_mask, object_mask = _masks(where, by_image.get(image_id, []), class_index, height, width,
                                             instances)
            write_sample(out_dir, stem, image, path, class_mask, colors, object_mask, visualize)
        except MasksmithError as exc:
            report.failed.append((ann_path, str(exc)))
            continue
        report.written.append(stem)
    return report
