"""Palettes, overlays, image/truth/prediction grids, training curves and evaluation plots.

Modules: ``colors`` (palette, indexed mask PNGs, colorize), ``overlays`` (colors over images, image
bytes and files), ``gallery`` (comparison grids), ``plots`` (curves, confusion matrix, per-class bars),
``text`` (file and class names as one printable line, safe to draw).
Import the public names from here: ``from masksmith.visualize import overlay``.

Conventions
-----------
* A mask is a 2-D integer array of class indices; ``ignore_index`` (keyword, always given: the caller
  knows its dataset's value, see ``masksmith.data.labels.LabelSpec``) marks unlabeled pixels.
* ``colors`` is a ``[K, 3]`` uint8 array (row ``k`` is the RGB color of class ``k``); ``default_colors``
  gives the PASCAL VOC palette for any ``K <= 256``.
* Every file is written through :func:`masksmith.core.fileio.atomic_path`, so an interrupted run never
  leaves a half-written PNG. The temporary file has a ``.tmp`` suffix, hence the explicit ``format=``
  on every save.
* Plots use ``matplotlib.figure.Figure`` directly, never ``pyplot``: no global state, no backend
  switching, safe to call from worker threads and in headless runs.
* Bad input raises ``ValueError`` with a one-line message (naming the file where there is one).
"""

from masksmith.visualize.colors import colorize, default_colors, mask_png_bytes, palette_image, save_mask_png
from masksmith.visualize.gallery import comparison_grid, save_comparison_grid
from masksmith.visualize.overlays import image_bytes, overlay, save_image
from masksmith.visualize.plots import plot_confusion, plot_curves, plot_per_class
from masksmith.visualize.text import drawable_text, plot_text

__all__ = [
    "default_colors",
    "palette_image",
    "mask_png_bytes",
    "save_mask_png",
    "colorize",
    "overlay",
    "image_bytes",
    "save_image",
    "comparison_grid",
    "save_comparison_grid",
    "plot_curves",
    "plot_confusion",
    "plot_per_class",
    "drawable_text",
    "plot_text",
]
