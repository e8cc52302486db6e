"""Annotations (Labelme, COCO, YOLO, Label Studio, CVAT) → VOC-style folders of images and class-index masks.

Every converter writes the layout Labelme's ``labelme2voc.py`` writes, which the rest of masksmith reads
as a dataset::

    OUT/JPEGImages/<stem>.jpg                     the photo
    OUT/SegmentationClass/<stem>.png              palette PNG, pixel value = class index, 255 = ignore
    OUT/SegmentationClassVisualization/<stem>.jpg overlay (optional)
    OUT/SegmentationObject/<stem>.png             instance ids 1..N, 0 = background (when instances exist)
    OUT/SegmentationObjectVisualization/<stem>.jpg
    OUT/class_names.txt                           one class name per line, background first
    OUT/ImageSets/Segmentation/<split>.txt        the stems of each split (YOLO datasets with splits)

In SegmentationObject, Labelme's ``__ignore__`` pixels are 0 (as Labelme writes them; the class mask
says ignore); COCO crowd pixels and the ``__ignore__`` regions of YOLO, Label Studio and CVAT are 255.
Masks and visualizations are palette PNGs / JPEGs in the VOC palette
(:func:`masksmith.visualize.default_colors`); an upright JPEG photo is copied byte for byte, anything
else is re-encoded as JPEG.

A bad annotation file (or, for COCO, Label Studio and CVAT, a bad image entry) is recorded in
:class:`ConvertReport.failed` with a one-line reason naming the file, and the run goes on; problems that
make the whole run meaningless (no input files, an unreadable labels/annotations file) raise
:class:`DataError`.
"""

from masksmith.data.convert.coco import convert_coco
from masksmith.data.convert.common import ConvertReport
from masksmith.data.convert.cvat import convert_cvat
from masksmith.data.convert.labelme import convert_labelme
from masksmith.data.convert.labelstudio import convert_labelstudio
from masksmith.data.convert.yolo import convert_yolo

__all__ = ["ConvertReport", "convert_coco", "convert_cvat", "convert_labelme", "convert_labelstudio", "convert_yolo"]
