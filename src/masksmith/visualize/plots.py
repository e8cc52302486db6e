"""Plots drawn with matplotlib (``Figure``, never ``pyplot``): training curves, confusion matrix, per-class bars.

No global state and no backend switching, so the plots are safe from worker threads and headless runs.
Every PNG is written atomically.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from masksmith.core.fileio import atomic_path
from masksmith.visualize.colors import PathLike
from masksmith.visualize.text import plot_text


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save_figure(fig: Any, out_png: PathLike, dpi: int = 110) -> None:
    with atomic_path(out_png) as tmp:
        # "tight" grows the canvas to whatever the labels need, so long class names are never clipped.
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.15)


def _read_metrics_csv(path: Path) -> dict[str, np.ndarray]:
    """Read a Lightning CSVLogger file into float columns (empty cells become NaN)."""
    if not path.is_file():
        raise ValueError(f"{path}: metrics file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        records = [r for r in reader if any(cell.strip() for cell in r)]
    if not header or not any(h.strip() for h in header):
        raise ValueError(f"{path}: metrics file is empty (no header row)")
    if not records:
        raise ValueError(f"{path}: metrics file has a header but no rows")
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        name = name.strip()
        if not name or name in columns:
            continue
        values = np.full(len(records), np.nan)
        for i, record in enumerate(records):
            if j < len(record) and record[j].strip():
                try:
                    values[i] = float(record[j])
                except ValueError:
                    pass  # a stray text cell is not a number to plot
        columns[name] = values
    return columns


def _x_axis(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """Per-row x values: the epoch, filled in from the step where a row lacks it."""
    n = len(next(iter(columns.values())))
    epoch = columns.get("epoch")
    step = columns.get("step")
    if epoch is None or np.isnan(epoch).all():
        if step is not None and not np.isnan(step).all():
            return step, "step"
        return np.arange(n, dtype=float), "row"
    epoch = epoch.copy()
    missing = np.isnan(epoch)
    if missing.any() and step is not None:
        # Callbacks such as LearningRateMonitor log with a step but no epoch: take the epoch of the
        # last row at or before that step.
        known = ~missing & ~np.isnan(step)
        if known.any():
            order = np.argsort(step[known], kind="stable")
            known_steps = step[known][order]
            known_epochs = epoch[known][order]
            fill = missing & ~np.isnan(step)
            idx = np.searchsorted(known_steps, step[fill], side="right") - 1
            epoch[fill] = known_epochs[np.clip(idx, 0, None)]
    return epoch, "epoch"


def _per_x(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` for every distinct ``x`` (NaNs dropped)."""
    ok = ~np.isnan(x) & ~np.isnan(y)
    if not ok.any():
        return np.empty(0), np.empty(0)
    xs, inverse = np.unique(x[ok], return_inverse=True)
    sums = np.bincount(inverse, weights=y[ok], minlength=len(xs))
    counts = np.bincount(inverse, minlength=len(xs))
    return xs, sums / counts


_LOWER_IS_BETTER = ("error", "err", "hausdorff", "distance", "mae", "mse", "rmse")


def plot_curves(metrics_csv: PathLike, out_png: PathLike, monitor: str | None = None) -> None:
    """Plot losses and validation metrics per epoch from a Lightning ``metrics.csv`` (atomic PNG).

    Panels: every column containing "loss"; every ``val_*`` column that is not a loss, with the best
    epoch of ``monitor`` (default: the first such column) marked; ``lr-*`` columns get a third
    panel when present. Step-level columns are averaged per epoch.
    """
    path = Path(metrics_csv)
    columns = _read_metrics_csv(path)
    x, xlabel = _x_axis(columns)
    names = list(columns)
    loss_cols = [c for c in names if "loss" in c.lower()]
    metric_cols = [c for c in names if c.lower().startswith("val_") and "loss" not in c.lower()]
    lr_cols = [c for c in names if c.lower().startswith("lr-") or c.lower() == "lr"]
    series = {c: _per_x(x, columns[c]) for c in loss_cols + metric_cols + lr_cols}
    series = {c: s for c, s in series.items() if len(s[0])}
    loss_cols = [c for c in loss_cols if c in series]
    metric_cols = [c for c in metric_cols if c in series]
    lr_cols = [c for c in lr_cols if c in series]
    if not loss_cols and not metric_cols:
        raise ValueError(f"{path}: no loss or val_* metric values to plot (columns: {', '.join(names)})")
    if monitor is not None and monitor not in metric_cols:
        raise ValueError(f"{path}: monitor column {monitor!r} not found among {metric_cols}")

    panels = [("losses", loss_cols), ("validation metrics", metric_cols)]
    if lr_cols:
        panels.append(("learning rate", lr_cols))
    fig = _new_figure(5.2 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    from matplotlib.ticker import MaxNLocator

    all_x = np.concatenate([s[0] for s in series.values()])
    x_lo, x_hi = float(all_x.min()), float(all_x.max())
    best_x = None
    for ax, (panel_title, cols) in zip(axes, panels):
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if xlabel == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if x_hi - x_lo < 1:  # a one-epoch run: widen so the integer locator has ticks to place
                ax.set_xlim(x_lo - 1, x_hi + 1)
        if not cols:
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        for c in cols:
            xs, ys = series[c]
            # Markers keep a one-epoch run (a single point) visible.
            ax.plot(xs, ys, marker="o", markersize=3 if len(xs) > 1 else 6, linewidth=1.5, label=c)
        if panel_title == "validation metrics":
            target = monitor or cols[0]
            xs, ys = series[target]
            lower = any(word in target.lower() for word in _LOWER_IS_BETTER)
            i = int(np.argmin(ys) if lower else np.argmax(ys))
            best_x = xs[i]
            ax.scatter([xs[i]], [ys[i]], marker="*", s=160, color="crimson", zorder=5,
                       label=f"best {target} = {ys[i]:.4g} ({xlabel} {xs[i]:g})")
        if panel_title == "learning rate":
            values = np.concatenate([series[c][1] for c in cols])
            if (values > 0).all() and values.max() / values.min() > 20:
                ax.set_yscale("log")
        ax.legend(fontsize=8, loc="best")
    if best_x is not None:
        for ax in axes[:2]:
            ax.axvline(best_x, color="crimson", linestyle="--", linewidth=0.8, alpha=0.6)
    _save_figure(fig, out_png)


def _compact(n: float) -> str:
    """Short count label: 950, 12.3k, 4.5M."""
    n = float(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.3g}{suffix}"
    return f"{n:.0f}"


def plot_confusion(
    matrix: np.ndarray,
    class_names: Sequence[str] | None,
    out_png: PathLike,
    normalize: bool = True,
) -> None:
    """Draw a confusion matrix (rows = truth, columns = prediction) as a heat map PNG (atomic).

    Rows are normalized to sum 1 when ``normalize``. Classes with no truth pixels are gray rows
    marked "(no truth)". Cell values are printed when K <= 20; the figure grows with K.
    """
    cm = np.asarray(matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {cm.shape}")
    k = cm.shape[0]
    names = [plot_text(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{k} classes in the confusion matrix but {len(names)} class names")
    row_sums = cm.sum(axis=1)
    empty = row_sums == 0
    values = cm / np.where(empty, 1.0, row_sums)[:, None] if normalize else cm.copy()
    values[empty] = np.nan  # masked: drawn as an empty gray row, not as zeros
    labels_y = [f"{n} (no truth)" if e else n for n, e in zip(names, empty)]

    annotate = k <= 20
    cell = 0.55 if annotate else 0.26  # inches per cell
    tick_size = 10 if k <= 10 else 8 if k <= 30 else 6.5
    side = max(4.0, cell * k)
    fig = _new_figure(side + 3.0, side + 2.0)
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")
    vmax = 1.0 if normalize else max(float(np.nanmax(values)) if not empty.all() else 1.0, 1.0)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, shrink=1.0 if k <= 20 else 0.5)
    cbar.ax.tick_params(labelsize=8)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45 if k <= 10 else 90, ha="right" if k <= 10 else "center",
                       rotation_mode="anchor" if k <= 10 else "default", fontsize=tick_size)
    ax.set_yticklabels(labels_y, fontsize=tick_size)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("confusion matrix" + (" (rows normalized)" if normalize else " (pixel counts)"))
    if annotate:
        font = 9 if k <= 10 else 7
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                if math.isnan(v):
                    continue
                if normalize:
                    text = "0" if v == 0 else "<.01" if v < 0.005 else f"{v:.2f}"
                else:
                    text = _compact(v)
                ax.text(j, i, text, ha="center", va="center", fontsize=font,
                        color="white" if v > 0.6 * vmax else "black")
    _save_figure(fig, out_png)


def plot_per_class(per_class: list[dict], out_png: PathLike, metric: str = "iou") -> None:
    """Draw a horizontal bar chart of one per-class metric, best at the top, absent classes last (atomic PNG).

    Each entry is ``{"name", metric: float or None, "support"}``; None or NaN is shown as "absent".
    """
    if not per_class:
        raise ValueError("plot_per_class needs at least one class")
    if not any(metric in entry for entry in per_class):
        raise ValueError(f"no entry has the metric {metric!r} (keys: {sorted(per_class[0])})")

    def value(entry: dict) -> float | None:
        v = entry.get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    present = sorted((e for e in per_class if value(e) is not None), key=lambda e: -value(e))  # type: ignore[operator]
    absent = [e for e in per_class if value(e) is None]
    ordered = present + absent
    n = len(ordered)
    fig = _new_figure(7.5, max(2.5, 0.28 * n + 1.3))
    ax = fig.add_subplot()
    ys = np.arange(n)
    vals = [value(e) or 0.0 for e in ordered]
    top = max([1.0] + vals)
    ax.barh(ys[: len(present)], vals[: len(present)], color="#3a7dbf", height=0.7)
    for y, entry in zip(ys, ordered):
        v = value(entry)
        support = entry.get("support")
        extra = f"  (n={_compact(support)})" if support is not None else ""
        if v is None:
            ax.text(0.01 * top, y, "absent" + extra, va="center", fontsize=8, color="gray", style="italic")
        else:
            # A white backing keeps the label readable where the mean line crosses it.
            ax.text(v + 0.01 * top, y, f"{v:.3f}{extra}", va="center", fontsize=8, zorder=4,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.5))
    if present:
        mean = float(np.mean([value(e) for e in present]))
        ax.axvline(mean, color="crimson", linestyle="--", linewidth=1, zorder=1,
                   label=f"mean {metric} = {mean:.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(ys)
    ax.set_yticklabels([plot_text(e.get("name", i)) for i, e in enumerate(ordered)], fontsize=8 if n > 30 else 9)
    ax.set_xlim(0, top * 1.25)  # room for the value labels
    if top == 1.0:
        ax.set_xticks(np.linspace(0.0, 1.0, 6))  # no ticks past 1 for a metric that cannot exceed it
    ax.set_ylim(n - 0.5, -0.5)  # inverted: best on top
    ax.set_xlabel(metric)
    ax.set_title(f"per-class {metric}")
    ax.grid(True, axis="x", alpha=0.3)
    _save_figure(fig, out_png)
