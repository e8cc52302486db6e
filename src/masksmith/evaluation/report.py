"""The evaluation report: metrics.json, per_class.csv, report.md, confusion/per-class plots, gallery."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from masksmith.core.fileio import write_text_atomic
from masksmith.visualize import drawable_text, plot_confusion, plot_per_class, save_comparison_grid

if TYPE_CHECKING:
    from masksmith.inference.predictor import Predictor

PER_CLASS_COLUMNS = ["index", "name", "iou", "dice", "precision", "recall", "support", "predicted"]
SUMMARY_KEYS = ["pixel_accuracy", "miou", "miou_no_background", "mean_dice", "mean_dice_no_background",
                "mean_precision", "mean_recall", "image_dice", "image_dice_left_out"]


def _number(value: Any) -> str:
    return "absent" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_cell(text: Any) -> str:
    """Text for one cell of a Markdown table: one line (drawable_text), with the characters that would end the
    cell, escape the next character, or start an HTML tag, a link or code escaped (emphasis is left alone:
    class_1 stays readable in the file)."""
    line = drawable_text(text)
    for char in "\\|<>[]`":
        line = line.replace(char, "\\" + char)
    return line


def per_class_table(result: dict[str, Any], title: str = "per-class results") -> Table:
    """A rich table of the per-class metrics followed by the summary."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    headers = {"index": "#", "support": "truth px", "predicted": "pred px"}
    for column in PER_CLASS_COLUMNS:
        table.add_column(headers.get(column, column), justify="left" if column == "name" else "right",
                         no_wrap=column != "name")
    for row in result["per_class"]:
        # Escaped: rich reads [...] in a cell as markup, and a class name may hold brackets.
        table.add_row(*(escape(_number(row.get(column))) for column in PER_CLASS_COLUMNS))
    return table


def print_results(result: dict[str, Any], console: Console | None = None) -> None:
    """Print the per-class table and one summary line per mean metric."""
    console = console or Console()
    console.print(per_class_table(result, f"{result.get('split', '')} split: {result.get('images', '?')} images"))
    for key in SUMMARY_KEYS:
        if key in result:
            console.print(f"{key:>24}: {_number(result[key])}")


def write_report(out_dir: Path, result: dict[str, Any], predictor: "Predictor", gallery: list[dict[str, Any]]) -> None:
    """Write every evaluation artefact into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "metrics.json", json.dumps(result, indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PER_CLASS_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in result["per_class"]:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in PER_CLASS_COLUMNS})
    write_text_atomic(out_dir / "per_class.csv", buffer.getvalue())
    names = predictor.class_names
    plot_confusion(np.array(result["confusion_matrix"]), names, out_dir / "confusion.png")
    plot_per_class(result["per_class"], out_dir / "per_class.png")
    if gallery:
        save_comparison_grid(gallery, out_dir / "gallery.png", predictor.colors, class_names=names,
                             ignore_index=predictor.meta.ignore_index)
    lines = [f"# Evaluation: {markdown_cell(result.get('split'))} split, {result.get('images')} images", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {_number(result[key])} |" for key in SUMMARY_KEYS if key in result]
    lines += ["", "| " + " | ".join(PER_CLASS_COLUMNS) + " |", "|" + " --- |" * len(PER_CLASS_COLUMNS)]
    lines += ["| " + " | ".join(markdown_cell(_number(row.get(c))) for c in PER_CLASS_COLUMNS) + " |"
              for row in result["per_class"]]
    lines += ["", "![confusion](confusion.png)", "", "![per-class IoU](per_class.png)", ""]
    if gallery:
        lines += ["Best and worst images by Dice (image | truth | prediction | overlay):", "", "![gallery](gallery.png)", ""]
    write_text_atomic(out_dir / "report.md", "\n".join(lines))
