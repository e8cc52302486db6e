"""CVAT for images 1.1 XML → VOC-style class and instance masks, drawn as CVAT's "Segmentation mask" export draws.

Conventions (those of CVAT's own "Segmentation mask 1.1" export, which runs datumaro)
------------------------------------------------------------------------------------
* Areas: ``<polygon>``, ``<box>`` (turned by its ``rotation`` about its centre) and ``<mask>`` (CVAT's
  RLE: comma-separated run lengths over the ``width`` x ``height`` box at ``left``, ``top``, row by row,
  starting with a run of 0s). Polygons and boxes are filled with pycocotools, as CVAT's export fills
  them. Polylines, points, ellipses, skeletons, cuboids and tags are not areas and are skipped, and so
  is a shape marked ``outside``.
* Drawing order: by ``z_order``, higher over lower, and in file order within one ``z_order``, each
  shape over the ones before (CVAT's export moves a rotated box after the other shapes of its
  ``z_order``; here it keeps its place in the file). ``occluded`` does not change pixels: an occluded
  object is drawn like any other, and what hides it is the shapes stacked over it.
* Instances: each shape is one; shapes sharing a ``group_id`` are one instance.
* Classes: the labels of ``<meta>`` in their order (skeleton parts and labels that only make tags,
  points or lines left out), or every label used, sorted, when ``<meta>`` lists none; ``background``
  is class 0 (added when not a label) and ``__ignore__`` marks ignore regions (255).
* The file is parsed with defusedxml and refused when it declares a DTD (no entity can expand), and it
  is streamed: each ``<image>`` is converted and dropped, so a large file needs little memory.
* ``name`` is looked up under IMAGES as written, then by its base name; the image's size must be the
  ``width`` and ``height`` the file states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from tqdm.auto import tqdm

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
from masksmith.data.convert.paint import Region, paint
from masksmith.data.convert.polygons import fill_polygons
from masksmith.errors import DataError, MasksmithError
from masksmith.visualize import default_colors

__all__ = ["convert_cvat", "cvat_mask"]

AREA_SHAPES = ("polygon", "box", "mask")
# Shapes CVAT's segmentation export leaves out; anything else inside <image> is refused as unknown.
SKIPPED_SHAPES = ("polyline", "points", "ellipse", "skeleton", "cuboid", "tag")
# Label types that cannot make an area ("any", "mask", "polygon", "rectangle" and untyped labels can).
_NON_AREA_LABEL_TYPES = ("tag", "points", "polyline", "skeleton", "ellipse", "cuboid")
_READ_BYTES = 8 * 2**20


@dataclass
class _Scan:
    """What the first pass over the file found."""

    labels: list[str] = field(default_factory=list)  # <meta> labels, in order
    used: set[str] = field(default_factory=set)
    images: list[tuple[str, str]] = field(default_factory=list)  # (where, name) of each <image>


class _Events:
    """An XMLParser target that builds the tree and records each element's start and end."""

    def __init__(self) -> None:
        self.builder = TreeBuilder()
        self.pending: list[tuple[str, Element]] = []

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.pending.append(("start", self.builder.start(tag, attrs)))

    def end(self, tag: str) -> None:
        self.pending.append(("end", self.builder.end(tag)))

    def data(self, text: str) -> None:
        self.builder.data(text)

    def close(self) -> Element:
        return self.builder.close()

    def drain(self) -> list[tuple[str, Element]]:
        events, self.pending = self.pending, []
        return events


def _events(path: Path) -> Iterator[tuple[str, Element]]:
    """(event, element) pairs as the file is read (DTDs refused); every XML problem is a DataError naming it."""
    target = _Events()
    parser = DefusedXMLParser(target=target, forbid_dtd=True)
    try:
        with open(path, "rb") as source:
            # Large pieces: expat rescans an unfinished token (a million-point polygon's attribute) on every
            # feed, so 16 KiB pieces, iterparse's, make such a file take minutes instead of a second.
            while chunk := source.read(_READ_BYTES):
                parser.feed(chunk)
                yield from target.drain()
            parser.close()
            yield from target.drain()
    except DefusedXmlException as exc:
        raise DataError(f"{path}: XML declaring a DTD or entities is refused (CVAT writes none; an entity "
                        f"could expand without bound): {type(exc).__name__}") from None
    except ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        reason = str(exc).split(":")[0]
        raise DataError(f"{path}: invalid XML: {reason} at line {line} column {column + 1}") from None
    except FileNotFoundError:
        raise DataError(f"{path}: annotations file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotations file: {exc.strerror or exc}") from None


def _images(path: Path) -> Iterator[Element]:
    """Each complete <image> element, in file order; the ones before are dropped to keep memory flat."""
    depth = 0
    root: Element | None = None
    for event, element in _events(path):
        if event == "start":
            depth += 1
            if root is None:
                root = element
                if element.tag != "annotations":
                    raise DataError(f"{path}: not a CVAT XML annotations file (root element <{element.tag}>)")
            elif depth == 2 and element.tag == "track":
                raise DataError(f"{path}: a 'CVAT for video' export (it has <track>s); export the task as "
                                "'CVAT for images 1.1'")
            continue
        depth -= 1
        if depth == 1 and element.tag in ("image", "meta"):
            yield element
            root.remove(element)


def _scan(path: Path) -> _Scan:
    scan = _Scan()
    for element in _images(path):
        if element.tag == "meta":
            for label in element.iter("label"):
                name = label.findtext("name")
                kind = (label.findtext("type") or "").strip()
                if name is None or label.find("parent") is not None or kind in _NON_AREA_LABEL_TYPES:
                    continue
                if name not in scan.labels:
                    scan.labels.append(name)
            continue
        where = f"{path}: image {element.get('id', '?')} ({element.get('name')!r})"
        scan.images.append((where, element.get("name") or ""))
        scan.used.update(shape.get("label", "") for shape in element if shape.tag in AREA_SHAPES)
    return scan


def _int(where: str, element: Element, key: str, default: int | None = None) -> int:
    text = element.get(key)
    if text is None and default is not None:
        return default
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: {key}={text!r} is not a whole number") from None


def _float(where: str, element: Element, key: str) -> float:
    text = element.get(key)
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: {key}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {key}={text!r} is not a finite number")
    return value


def _numbers(text: str, dtype: type) -> np.ndarray | None:
    """Comma-separated numbers parsed in C (a million-point polygon needs no list of strings); None if malformed."""
    try:
        return np.fromstring(text, dtype=dtype, sep=",")
    except ValueError:
        return None


def _points(where: str, text: str | None) -> np.ndarray:
    """ "x0,y0;x1,y1;..." → [N, 2] float64 (finite)."""
    if not text or not text.strip():
        raise DataError(f"{where}: has no points")
    count = text.count(";") + 1
    values = _numbers(text.replace(";", ","), np.float64)
    if values is None or len(values) != 2 * count:
        raise DataError(f"{where}: points must be numbers, x,y pairs separated by ';'")
    if not np.isfinite(values).all():
        raise DataError(f"{where}: a point coordinate is not a finite number (nan or inf)")
    return values.reshape(-1, 2)


def _box(where: str, shape: Element) -> np.ndarray:
    x0, y0, x1, y1 = (_float(where, shape, key) for key in ("xtl", "ytl", "xbr", "ybr"))
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    angle = math.radians(_float(where, shape, "rotation")) if shape.get("rotation") is not None else 0.0
    if angle:
        # CVAT turns a box about its centre, clockwise on screen for a positive angle (y points down).
        centre = corners.mean(axis=0)
        turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        corners = (corners - centre) @ turn.T + centre
    return corners


def cvat_mask(where: str, shape: Element, height: int, width: int) -> np.ndarray:
    """A <mask> element as an HxW bool mask of the image (the part of its box outside the image dropped)."""
    box_w, box_h = _int(where, shape, "width"), _int(where, shape, "height")
    left, top = _int(where, shape, "left"), _int(where, shape, "top")
    if box_w < 1 or box_h < 1:
        raise DataError(f"{where}: mask box is {box_w}x{box_h}; it needs a positive width and height")
    text = shape.get("rle") or ""
    # More runs than pixels cannot cover the box exactly; counted before anything is parsed.
    if text.count(",") >= box_w * box_h + 1:
        raise DataError(f"{where}: rle has more runs than the {box_w}x{box_h} mask box has pixels")
    runs = _numbers(text, np.int64)
    if runs is None or len(runs) != text.count(",") + 1:
        raise DataError(f"{where}: rle must be comma-separated whole numbers")
    if (runs < 0).any():
        raise DataError(f"{where}: rle holds a negative run length")
    if int(runs.sum()) != box_w * box_h:
        raise DataError(f"{where}: rle covers {int(runs.sum())} pixels but the mask box is {box_w}x{box_h} "
                        f"= {box_w * box_h}")
    # Runs alternate 0s and 1s, the first of 0s; row by row over the box.
    tight = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(box_h, box_w)
    out = np.zeros((height, width), dtype=bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + box_h, height), min(left + box_w, width)
    if y0 < y1 and x0 < x1:
        out[y0:y1, x0:x1] = tight[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _shape(at: str, shape: Element, height: int, width: int) -> Callable[[], np.ndarray]:
    """A checked area shape's pixels, to compute when drawn (a polygon or box is parsed here, once)."""
    if shape.tag == "mask":
        return lambda: cvat_mask(at, shape, height, width)
    if shape.tag == "box":
        outline = _box(at, shape)
    else:
        outline = _points(at, shape.get("points"))
        if len(outline) < 3:
            raise DataError(f"{at}: a polygon of {len(outline)} point(s); it needs at least 3")
    return lambda: fill_polygons([outline], height, width)


def _regions(where: str, image: Element, class_index: dict[str, int], labels_source: str) -> list[Region]:
    """The image's area shapes as regions in drawing order (z_order, then file order); all checked first."""
    height, width = _int(where, image, "height"), _int(where, image, "width")
    shapes = []
    for number, shape in enumerate(image):
        if shape.tag in SKIPPED_SHAPES:
            continue
        at = f"{where}: {shape.tag} {number}"
        if shape.tag not in AREA_SHAPES:
            raise DataError(f"{at}: unknown element <{shape.tag}> (CVAT for images 1.1 has box, polygon, mask, "
                            "polyline, points, ellipse, skeleton, cuboid, tag)")
        label = shape.get("label")
        at = f"{at} ({label!r})"
        if label not in class_index:
            raise DataError(f"{at}: label {label!r} is not in {labels_source}")
        if shape.get("occluded", "0") not in ("0", "1"):
            raise DataError(f"{at}: occluded={shape.get('occluded')!r}, expected 0 or 1")
        if shape.get("outside") == "1":
            continue
        z_order, group = _int(at, shape, "z_order", 0), _int(at, shape, "group_id", 0)
        pixels = _shape(at, shape, height, width)
        shapes.append((z_order, number, Region(class_index[label], ("group", group) if group else None, pixels)))
    shapes.sort(key=lambda s: (s[0], s[1]))
    return [region for _, _, region in shapes]


def convert_cvat(
    annotations: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    instances: bool = True,
    visualize: bool = True,
    progress: bool = True,
) -> ConvertReport:
    """Convert a CVAT for images 1.1 XML file and its images into a VOC-style dataset in `out_dir`."""
    xml_path, images_dir, out_dir = Path(annotations), Path(images_dir), Path(out_dir)
    scan = _scan(xml_path)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found")
    if not scan.images:
        raise DataError(f"{xml_path}: no <image> elements (is it a CVAT for images 1.1 export?)")
    names = scan.labels or sorted(scan.used)
    labels_source = "the labels of <meta>" if scan.labels else "the labels used"
    classes, class_index = class_table([(name, name) for name in names], f"{xml_path}: {labels_source}")

    sources = [xml_path, *images_found(images_dir, (name for _, name in scan.images))]
    stems = list(dict.fromkeys(output_stem(name) for _, name in scan.images))
    open_output(out_dir, images_dir, sources, stems, classes, visualize=visualize, objects=instances)
    colors = default_colors(len(classes))
    report = ConvertReport(class_names=list(classes))
    claimed: dict[str, str] = {}
    elements = (e for e in _images(xml_path) if e.tag == "image")
    for element in tqdm(elements, total=len(scan.images), desc="converting cvat", unit="img", disable=not progress):
        name = element.get("name") or ""
        where = f"{xml_path}: image {element.get('id', '?')} ({name!r})"
        stem = output_stem(name)
        try:
            claim_stem(claimed, stem, name, where)
            path = find_image(where, images_dir, name)
            image = read_photo(where, path)
            height, width = image.shape[:2]
            stated = (_int(where, element, "width"), _int(where, element, "height"))
            if stated != (width, height):
                raise DataError(f"{where}: the file says {stated[0]}x{stated[1]} but the image is {width}x{height} "
                                "(WxH)")
            regions = _regions(where, element, class_index, labels_source)
            class_mask, object_mask = paint(where, (height, width), regions, instances=instances)
            write_sample(out_dir, stem, image, path, class_mask, colors, object_mask, visualize)
        except MasksmithError as exc:
            report.failed.append((xml_path, str(exc)))
            continue
        report.written.append(stem)
    return report
