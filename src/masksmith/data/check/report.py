"""The check report: problems with a severity and a code, the dataset statistics, and their printed form."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from masksmith.data.classes import VoidClass
from masksmith.data.discover import Sample
from masksmith.data.encoding import DEFAULT_IGNORE_INDEX, MaskEncoding
from masksmith.data.labels import LabelSpec

Severity = Literal["error", "warning"]

RARE_IMAGE_SHARE = 0.01  # rare: in fewer than 1% of the masks ...
RARE_MAX_IMAGES = 2  # ... or in at most 2 masks (the rule that matters for small datasets)
LISTED = 10  # files listed per problem code in the printed report
HASH = "blake2b-128 of the file bytes"


def display_path(path: str | os.PathLike) -> str:
    """A printable, JSON-safe form of a path: bytes that are not UTF-8 become \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def safe_text(text: str) -> str:
    """`text` with undecodable file-name bytes (lone surrogates) shown as \\xNN escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


@dataclass
class Problem:
    """One thing wrong with the data: severity, code, the files involved and a one-line message."""

    severity: Severity
    code: str
    paths: list[Path]
    message: str

    def __post_init__(self) -> None:
        # Messages quote file names; undecodable bytes in them must not break a print or json.dump.
        self.message = safe_text(self.message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; paths made printable."""
        return {
            "severity": self.severity,
            "code": self.code,
            "paths": [display_path(p) for p in self.paths],
            "message": safe_text(self.message),
        }


@dataclass
class CheckReport:
    """The result of `check_dataset`: statistics of the data and the problems found."""

    root: Path
    splits: dict[str, int] = field(default_factory=dict)  # pairs per split
    unpaired: dict[str, dict[str, list[Path]]] = field(default_factory=dict)  # split -> images/masks
    encoding: MaskEncoding | None = None
    labels: LabelSpec | None = None  # what resolve_labels decided (None when the masks could not be read)
    # The pairs found, per split: training reads them from here instead of discovering the data again.
    pairs: dict[str, list[Sample]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    ignore_index: int = DEFAULT_IGNORE_INDEX
    classes_given: bool = False
    classes_file: Path | None = None
    void: VoidClass | None = None  # the class list's class that the ignore value names: left out of the classes
    class_pixels: dict[str, list[int]] = field(default_factory=dict)  # split (and "overall") -> per class
    class_images: dict[str, list[int]] = field(default_factory=dict)  # masks in which each class occurs
    class_runs: dict[str, list[int]] = field(default_factory=dict)  # runs along rows + columns (structure_runs)
    masks_counted: dict[str, int] = field(default_factory=dict)  # masks that went into the class counts
    ignored_pixels: dict[str, int] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)
    image_channels: dict[int, int] = field(default_factory=dict)
    image_sizes: dict[tuple[int, int], int] = field(default_factory=dict)  # (width, height) -> images
    mean: list[float] | None = None
    std: list[float] | None = None
    stats_images: int = 0
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        """Problems of severity "error"."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Problems of severity "warning"."""
        return [p for p in self.problems if p.severity == "warning"]

    def pairs_read_cleanly(self) -> set[Sample]:
        """The pairs whose image and mask were fully read and decoded (with `labels`) and no error names them;
        empty when the labels could not be decided. Training keeps these without reading them again."""
        if self.labels is None:
            return set()
        blamed = {path for problem in self.errors for path in problem.paths}
        return {s for samples in self.pairs.values() for s in samples
                if s.mask is not None and s.image not in blamed and s.mask not in blamed}

    def by_code(self, code: str) -> list[Problem]:
        """The problems with this code."""
        return [p for p in self.problems if p.code == code]

    def exit_code(self, strict: bool = False) -> int:
        """0 when clean, 2 when any error, 1 when only warnings and `strict`, else 0."""
        if self.errors:
            return 2
        return 1 if strict and self.warnings else 0

    @property
    def num_classes(self) -> int:
        """Number of classes the masks were decoded into (0 when the encoding is unknown)."""
        return len(self.class_names)

    def class_status(self, index: int) -> str:
        """"never seen", "rare" or "" for class `index`, by the module's rules."""
        images = self.class_images.get("overall")
        total = self.masks_counted.get("overall", 0)
        if not images or total == 0:
            return ""
        count = images[index]
        if count == 0:
            return "never seen"
        return "rare" if is_rare(count, total) else ""

    def never_seen(self) -> list[str]:
        """Names of the classes that occur in no mask."""
        return [n for i, n in enumerate(self.class_names) if self.class_status(i) == "never seen"]

    def rare_classes(self) -> list[str]:
        """Names of the classes that occur in very few masks (see `is_rare`)."""
        return [n for i, n in enumerate(self.class_names) if self.class_status(i) == "rare"]

    def pixel_shares(self, split: str = "overall") -> list[float]:
        """Each class's share of the labelled (not ignored) pixels of `split`."""
        pixels = self.class_pixels.get(split)
        if not pixels:
            return []
        total = sum(pixels)
        return [p / total if total else 0.0 for p in pixels]

    def structure_width(self, split: str = "overall") -> float | None:
        """Mean width in pixels of the labelled structures of `split`: the foreground classes' (1..N) pixels per
        run along rows and columns (files.structure_runs); None without foreground."""
        pixels, runs = self.class_pixels.get(split), self.class_runs.get(split)
        if not pixels or not runs or sum(runs[1:]) == 0:
            return None
        return sum(pixels[1:]) / sum(runs[1:])

    def size_summary(self) -> dict[str, Any]:
        """min / median / max of width and height over readable images, and the most common sizes."""
        if not self.image_sizes:
            return {"images": 0}
        sizes = list(self.image_sizes.items())
        counts = [c for _, c in sizes]
        widths = np.repeat([s[0] for s, _ in sizes], counts)
        heights = np.repeat([s[1] for s, _ in sizes], counts)

        def spread(values: np.ndarray) -> dict[str, float]:
            return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}

        common = sorted(sizes, key=lambda item: (-item[1], item[0]))[:5]
        return {
            "images": int(sum(counts)),
            "width": spread(widths),
            "height": spread(heights),
            "common": [{"width": w, "height": h, "count": c} for (w, h), c in common],
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything in JSON-ready form (paths as printable strings)."""
        shares = self.pixel_shares()
        classes = []
        for index, name in enumerate(self.class_names):
            classes.append({
                "index": index,
                "name": safe_text(name),
                "pixels": self.class_pixels.get("overall", [0] * self.num_classes)[index],
                "pixel_share": shares[index] if shares else 0.0,
                "images": self.class_images.get("overall", [0] * self.num_classes)[index],
                "status": self.class_status(index),
                "per_split": {
                    split: {"pixels": self.class_pixels[split][index], "images": self.class_images[split][index]}
                    for split in self.class_pixels if split != "overall"
                },
            })
        codes = Counter(p.code for p in self.problems)
        return {
            "root": display_path(self.root),
            "seconds": round(self.seconds, 3),
            "files_checked": self.files_checked,
            "splits": dict(self.splits),
            "unpaired": {
                split: {role: [display_path(p) for p in paths] for role, paths in roles.items()}
                for split, roles in self.unpaired.items()
            },
            "encoding": self.encoding.to_dict() if self.encoding is not None else None,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "void": None if self.void is None else {"index": self.void.index, "name": safe_text(self.void.name),
                                                    "message": safe_text(self.void.text())},
            "classes": classes,
            "never_seen": [safe_text(n) for n in self.never_seen()],
            "rare": [safe_text(n) for n in self.rare_classes()],
            "masks_counted": dict(self.masks_counted),
            "ignored_pixels": dict(self.ignored_pixels),
            "images": {
                "modes": dict(self.image_modes),
                "channels": {str(k): v for k, v in sorted(self.image_channels.items())},
                "sizes": self.size_summary(),
            },
            "mean": self.mean,
            "std": self.std,
            "stats_images": self.stats_images,
            "structure_width": self.structure_width(),
            "duplicate_hash": HASH,
            "problems": [p.to_dict() for p in self.problems],
            "summary": {"errors": len(self.errors), "warnings": len(self.warnings), "by_code": dict(codes)},
        }


def is_rare(count: int, total: int) -> bool:
    """A class in `count` of `total` masks is rare below 1% of them or at 2 masks or fewer (never if in all)."""
    return 0 < count < total and (count <= RARE_MAX_IMAGES or count < RARE_IMAGE_SHARE * total)


def print_report(report: CheckReport, console: Console) -> None:
    """A readable terminal report: counts, classes, sizes, and problems grouped by code."""

    def text(value: Any) -> str:
        return escape(safe_text(str(value)))

    console.print(f"[bold]Dataset[/bold] {text(display_path(report.root))}  "
                  f"({report.files_checked} files in {report.seconds:.1f} s)")

    counts = Table(title="Pairs per split", title_justify="left")
    for column in ("split", "pairs", "unpaired images", "unpaired masks"):
        counts.add_column(column, justify="left" if column == "split" else "right")
    for split, pairs in report.splits.items():
        roles = report.unpaired.get(split, {})
        counts.add_row(text(split), str(pairs), str(len(roles.get("images", []))), str(len(roles.get("masks", []))))
    console.print(counts)

    if report.image_sizes:
        summary = report.size_summary()
        sizes = Table(title="Image sizes (pixels)", title_justify="left")
        for column in ("", "min", "median", "max"):
            sizes.add_column(column, justify="right")
        for axis in ("width", "height"):
            spread = summary[axis]
            sizes.add_row(axis, str(spread["min"]), f"{spread['median']:g}", str(spread["max"]))
        console.print(sizes)
        common = ", ".join(f"{c['width']}x{c['height']} ({c['count']})" for c in summary["common"])
        modes = ", ".join(f"{text(m)} {n}" for m, n in report.image_modes.items())
        console.print(f"most common sizes: {common}")
        console.print(f"image modes: {modes}")
        if report.mean is not None:
            console.print(f"mean {report.mean}, std {report.std} (0..1 scale, {report.stats_images} images)")

    if report.void is not None:
        console.print(text(report.void.text()))
    if report.class_names and report.class_pixels:
        encoding = report.encoding.kind if report.encoding else "?"
        table = Table(title=f"Classes ({report.num_classes}, {encoding} masks; "
                            f"{report.masks_counted.get('overall', 0)} masks counted)", title_justify="left")
        for column in ("#", "class", "pixel share", "masks", "status"):
            table.add_column(column, justify="left" if column in ("class", "status") else "right")
        shares = report.pixel_shares()
        images = report.class_images["overall"]
        order = sorted(range(report.num_classes), key=lambda i: (-shares[i], -images[i], i))
        for index in order:
            status = report.class_status(index)
            style = {"never seen": "bold red", "rare": "yellow"}.get(status, "")
            table.add_row(str(index), text(report.class_names[index]), f"{100 * shares[index]:.3f}%",
                          str(images[index]), f"[{style}]{status.upper()}[/{style}]" if status else "")
        console.print(table)
        width = report.structure_width()
        if width is not None:
            console.print(f"labelled structures: {width:.1f} px wide on average (foreground pixels per run along "
                          "rows and columns: the plan crops rather than resizes images whose structures resizing would thin out)")
        if report.never_seen():
            console.print(f"[bold red]never seen:[/bold red] {text(', '.join(report.never_seen()))}")
        if report.rare_classes():
            console.print(f"[yellow]rare[/yellow] (in < {100 * RARE_IMAGE_SHARE:g}% of masks or in "
                          f"≤ {RARE_MAX_IMAGES}): {text(', '.join(report.rare_classes()))}")

    if report.problems:
        grouped: dict[str, list[Problem]] = {}
        for problem in report.problems:
            grouped.setdefault(problem.code, []).append(problem)
        order = sorted(grouped, key=lambda code: (grouped[code][0].severity != "error", code))
        for code in order:
            problems = grouped[code]
            severity = problems[0].severity
            colour = "red" if severity == "error" else "yellow"
            console.print(f"[{colour}]{severity}[/{colour}] [bold]{code}[/bold]: {len(problems)}")
            lines = [problems[0].message] if len(problems) == 1 else [p.message for p in problems]
            for line in lines[:LISTED]:
                console.print(f"  {text(line)}", highlight=False)
            if len(lines) > LISTED:
                console.print(f"  … and {len(lines) - LISTED} more")
    errors, warns = len(report.errors), len(report.warnings)
    verdict = "[green]clean[/green]" if not report.problems else (
        f"[red]{errors} error(s)[/red], [yellow]{warns} warning(s)[/yellow]")
    console.print(f"[bold]Result:[/bold] {verdict}")
