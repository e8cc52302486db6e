"""Regenerate the CVAT references in this folder with datumaro (not run by the tests).

    python tests/data/convert/cvat/make.py datumaro-export   # with datumaro (openvinotoolkit, 1.x) installed
    python tests/data/convert/cvat/make.py docs-example      # with CVAT's fork (github.com/cvat-ai/datumaro)

datumaro-export/: a dataset built here (polygons, boxes, masks, z_order, groups, occluded, an __ignore__
label) written by datumaro's CVAT exporter (annotations.xml and images/), and reference/<stem>.png.
docs-example-reference.png: the reference for docs-example.xml, the example of CVAT's "XML annotation
format" documentation page.

A reference is what CVAT's "Segmentation mask" export draws: datumaro's polygons_to_masks,
boxes_to_masks and merge_instance_segments, then the masks stacked by z_order; pixel values are the
masksmith class indices of class_names.txt (255 for __ignore__). Polygon corners lie on a 0.25 grid, so
datumaro 1.x, which keeps coordinates in float32, reads them exactly. CVAT's fork cannot read <mask>
or <tag> elements, so the docs example's one mask (under a polygon of the same label) and its tag
are left out for it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image

import datumaro as dm
from datumaro.components.annotation import AnnotationType, CompiledMask

HERE = Path(__file__).resolve().parent


def reference(xml: Path, names: list[str], out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(xml, Path(tmp) / "annotations.xml")
        (Path(tmp) / "images").mkdir()
        for name in [element.get("name") for element in ElementTree.parse(xml).iter("image")]:
            (Path(tmp) / "images" / name).touch()  # datumaro wants the files; the sizes come from the XML
        dataset = dm.Dataset.import_from(tmp, "cvat")
        for transform in ("polygons_to_masks", "boxes_to_masks", "merge_instance_segments"):
            dataset.transform(transform)
        labels = dataset.categories()[AnnotationType.label]
        for item in dataset:
            masks = [a for a in item.annotations if a.type == AnnotationType.mask]
            ids = [names.index(labels[m.label].name) if labels[m.label].name in names else 255 for m in masks]
            height, width = (item.media if hasattr(item, "media") else item.image).size
            cls = (CompiledMask.from_instance_masks(masks, instance_labels=ids).class_mask if masks
                   else np.zeros((height, width)))
            Image.fromarray(cls.astype(np.uint8)).save(out / f"{Path(item.id).name}.png")


def datumaro_export() -> None:
    folder = HERE / "datumaro-export"
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(3)
    labels = ["road", "car", "__ignore__", "person"]
    items = []
    for n, (height, width) in enumerate([(48, 64), (40, 56)]):
        car = np.zeros((height, width), bool)
        car[10:30, 20:44] = True
        car[14:18, 24:30] = False  # a hole: masks keep it, polygons could not
        speckle = rng.random((height, width)) > 0.9
        annotations = [
            dm.Polygon([0, 30, width, 30, width, height, 0, height], label=0, z_order=0),        # road
            dm.Mask(car, label=1, z_order=1, group=1, attributes={"occluded": True}),            # occluded car
            dm.Polygon([40.25, 8.5, 60.75, 8.5, 60.75, 20.25, 40.25, 20.25], label=1, z_order=1, group=1),
            dm.Bbox(4.5, 4.25, 12.5, 30.75, label=3, z_order=2),                                 # person on top
            dm.Polygon([2, 2, 9.5, 2, 5.75, 8], label=3, z_order=0),                             # under the box
            dm.Mask(speckle & (np.arange(width) > width - 12), label=2, z_order=3),              # ignore
            dm.Polygon([30, 35.5, 50.25, 35.5, 40, 46.75], label=1, z_order=0),                  # car on the road: same z, later
        ]
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        items.append(dm.DatasetItem(id=f"frame_{n}", media=dm.Image.from_numpy(image), annotations=annotations))
    dataset = dm.Dataset.from_iterable(items, categories=labels)
    dataset.export(str(folder), "cvat", save_media=True)
    (folder / "reference").mkdir()
    xml = next(folder.glob("*.xml"))
    reference(xml, ["background", "road", "car", "person"], folder / "reference")


def docs_example() -> None:
    xml = HERE / "docs-example.xml"
    kept = [line for line in xml.read_text().splitlines(keepends=True)
            if not any(tag in line for tag in ("<tag ", "</tag>", "<mask ", "</mask>"))]
    with tempfile.TemporaryDirectory() as tmp:
        stripped = Path(tmp) / "docs-example.xml"
        stripped.write_text("".join(kept))
        reference(stripped, ["background", "car", "traffic_line", "wheel", "plate"], Path(tmp))
        shutil.copy(Path(tmp) / "filename000.png", HERE / "docs-example-reference.png")


if __name__ == "__main__":
    {"datumaro-export": datumaro_export, "docs-example": docs_example}[sys.argv[1]]()
