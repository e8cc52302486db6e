"""The dataset fingerprint: the summary of a check report that planning reads (fingerprint.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from masksmith.core.fileio import write_text_atomic
from masksmith.data.check.report import CheckReport, display_path, safe_text


def fingerprint(report: CheckReport) -> dict[str, Any]:
    """The dataset summary that planning needs (training split when there is one, else all pairs)."""
    source = "train" if "train" in report.class_pixels else "overall"
    train_images = report.splits.get("train", sum(report.splits.values()))
    sizes = report.size_summary()
    dominant = max(report.image_channels.items(), key=lambda item: item[1])[0] if report.image_channels else None
    shares = report.pixel_shares(source)
    return {
        "version": 1,
        "dataset": display_path(report.root),
        "splits": dict(report.splits),
        "train_images": train_images,
        "image_size": {
            "median_width": sizes["width"]["median"] if sizes.get("images") else None,
            "median_height": sizes["height"]["median"] if sizes.get("images") else None,
            "min_width": sizes["width"]["min"] if sizes.get("images") else None,
            "min_height": sizes["height"]["min"] if sizes.get("images") else None,
            "max_width": sizes["width"]["max"] if sizes.get("images") else None,
            "max_height": sizes["height"]["max"] if sizes.get("images") else None,
            "common": sizes.get("common", []),
        },
        "channels": dominant,
        "image_modes": dict(report.image_modes),
        "num_classes": report.num_classes,
        "class_names": [safe_text(n) for n in report.class_names],
        "encoding": report.encoding.to_dict() if report.encoding is not None else None,
        "ignore_index": report.ignore_index,
        "class_statistics_from": source,
        "class_pixel_frequency": [round(s, 8) for s in shares],
        "class_image_count": list(report.class_images.get(source, [])),
        "masks_counted": report.masks_counted.get(source, 0),
        "foreground_share": round(1.0 - shares[0], 8) if shares else None,
        "structure_width": round(width, 2) if (width := report.structure_width(source)) is not None else None,
        "never_seen": [safe_text(n) for n in report.never_seen()],
        "rare": [safe_text(n) for n in report.rare_classes()],
        "mean": report.mean,
        "std": report.std,
        "stats_images": report.stats_images,
        "problems": {"errors": len(report.errors), "warnings": len(report.warnings)},
    }


def write_fingerprint(report: CheckReport, path: str | Path) -> Path:
    """Write `fingerprint(report)` as JSON, atomically; returns the path."""
    path = Path(path)
    write_text_atomic(path, json.dumps(fingerprint(report), indent=1) + "\n")
    return path

