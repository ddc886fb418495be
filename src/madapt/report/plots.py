"""PNG plots for run reports: the accuracy-matrix heatmap and line curves.

Figures are built with matplotlib's object API on an Agg canvas (`FigureCanvasAgg`) instead of
`pyplot`: no backend switch, no global figure registry, nothing to close, and it works on a machine
without a display. PNGs are rendered in memory and written atomically (temp file + rename), so a
kill never leaves a half-written image in a run folder.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from madapt.runs import atomic_write_bytes

DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path | str) -> Path:
    """Render ``fig`` to PNG and write it atomically; returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def heatmap_figure(
    acc: Sequence[Sequence[float]] | np.ndarray,
    dataset_names: Sequence[str],
    title: str,
    task_names: Sequence[str] | None = None,
) -> Figure:
    """Annotated T×T heatmap: row i = "after task i", column j = dataset j (seed 000 Table 3.5).

    ``task_names`` label the rows; MTIL trains one task per dataset, so they default to
    ``dataset_names``. Colours span 0–100 % so heatmaps of different runs compare by eye.
    """
    arr = np.asarray(acc, dtype=np.float64)
    names = list(dataset_names)
    tasks = list(task_names) if task_names is not None else names
    if arr.ndim != 2 or arr.shape != (len(tasks), len(names)):
        raise ValueError(
            f"matrix shape {arr.shape} does not match {len(tasks)} tasks x {len(names)} datasets"
        )
    n_rows, n_cols = arr.shape
    fig = _new_figure(max(4.0, 0.75 * n_cols + 2.5), max(3.5, 0.6 * n_rows + 2.0))
    ax = fig.add_subplot()
    image = ax.imshow(arr, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_xticks(range(n_cols), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), labels=[f"after {t}" for t in tasks])
    ax.set_xlabel("evaluated on")
    ax.set_title(title)
    fontsize = 9 if n_cols <= 8 else 7
    for i in range(n_rows):
        for j in range(n_cols):
            # Dark cells (low values in viridis) get white text.
            colour = "white" if arr[i, j] < 60.0 else "black"
            ax.text(j, i, f"{arr[i, j]:.1f}", ha="center", va="center", color=colour, fontsize=fontsize)
    return fig


def accuracy_heatmap(
    acc: Sequence[Sequence[float]] | np.ndarray,
    dataset_names: Sequence[str],
    path: Path | str,
    title: str,
    task_names: Sequence[str] | None = None,
) -> Path:
    """Write the annotated accuracy-matrix heatmap (`heatmap_figure`) to ``path`` as PNG."""
    return save_png(heatmap_figure(acc, dataset_names, title, task_names), path)


def curves_figure(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str,
) -> Figure:
    """One line with markers per named series, all over the same ``xs``."""
    if not series:
        raise ValueError("no series to plot")
    for name, ys in series.items():
        if len(ys) != len(xs):
            raise ValueError(f"series '{name}' has {len(ys)} values for {len(xs)} x positions")
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, ys in series.items():
        ax.plot(list(xs), [np.nan if y is None else float(y) for y in ys], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def curves(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: Path | str,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Write `curves_figure` to ``path`` as PNG."""
    return save_png(curves_figure(xs, series, xlabel, ylabel, title), path)
