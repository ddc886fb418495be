"""The report of recipe ``kind: visual_prompt`` (`madapt.prompting.visual`, seed 000 ch. 6).

It holds the accuracy table per variant (Tables 6.3–6.8 in
miniature), the mapping table and the mapping visual of Figure 6.4 (one target-class example per
column, the source class each mapper sent it to underneath), and the training-loss curves.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from madapt.report import plots
from madapt.report.markdown import Section, write_report
from madapt.report.tables import print_table

MAX_GRID_CLASSES = 16
DESCRIPTIONS = {"hardcoded": "VP (hard-coded)", "random": "random", "flm": "FLM", "ilm": "ILM",
                "otlm": "OTLM",
                "full_finetune": "FF (new head)", "linear_probe": "LP (new head)"}


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for tag, r in results["variants"].items():
        seconds = [h["seconds"] for h in r["history"]]
        rows.append({"variant": tag, "method": DESCRIPTIONS.get(r["name"], r["name"]),
                     "refresh": r.get("mapping_source") or "-", "accuracy (%)": r["accuracy"],
                     "avg cost": None if r.get("mapping_cost") is None else f"{r['mapping_cost']:.3f}",
                     "trainable": r["trainable_params"],
                     "s/epoch": float(np.median(seconds)) if seconds else None})
    return rows


def mapping_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    mapped = {t: r["mapped_names"] for t, r in results["variants"].items() if "mapped_names" in r}
    return [{"target": name, **{t: names[j] for t, names in mapped.items()}}
            for j, name in enumerate(results["classnames"])]


def mapping_grid(results: dict[str, Any], data: Any, train_index: np.ndarray, path: Path) -> Path | None:
    """Figure 6.4 in miniature: a training example of each target class over its mapped source classes."""
    mapped = {t: r["mapped_names"] for t, r in results["variants"].items() if "mapped_names" in r}
    if not mapped:
        return None
    labels = np.asarray(data.train.targets)[train_index]
    n = min(len(data.classnames), MAX_GRID_CLASSES)
    fig = plots._new_figure(1.25 * n + 1.2, 1.3 + 0.42 * len(mapped))
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, 0.35 * len(mapped)])
    for j in range(n):
        ax = fig.add_subplot(grid[0, j])
        ax.set_axis_off()
        ax.set_title(textwrap.shorten(data.classnames[j], 14), fontsize=8)
        first = train_index[np.flatnonzero(labels == j)[0]] if (labels == j).any() else None
        if first is not None:
            ax.imshow(data.train[int(first)][0].permute(1, 2, 0).clamp(0, 1).numpy())
        text = fig.add_subplot(grid[1, j])
        text.set_axis_off()
        for row, (tag, names) in enumerate(mapped.items()):
            y = 1 - (row + 0.5) / len(mapped)
            text.text(0.5, y, textwrap.shorten(names[j], 16), ha="center", va="center", fontsize=7,
                      transform=text.transAxes)
            if j == 0:  # row labels: the variant that chose this row's source classes
                text.text(-0.15, y, tag, ha="right", va="center", fontsize=7, weight="bold",
                          transform=text.transAxes)
    fig.suptitle(f"{results['dataset']}: target class example and the source class each mapper chose",
                 fontsize=9)
    return plots.save_png(fig, path)


def report(results: dict[str, Any], folder: Any, console: Console) -> None:
    """Terminal table + report.md (accuracy per variant, mapping table and visual, loss curves)."""
    rows = summary_rows(results)
    title = f"Visual prompting on {results['dataset']} ({results['backbone']}): test accuracy"
    print_table(title, rows, console=console)
    text = (f"{results['train_images']} training images (shots_fraction {results['shots_fraction']}), "
            f"{len(results['classnames'])} target classes, {results['n_source']} source classes. "
            "refresh: how ILM/OTLM recompute the mapping (extra_pass: an extra forward pass over the "
            "training set; train_pass: from the training forward passes). avg cost: the mapping's "
            "cost per target class under the mapper's own cost matrix.")
    sections = [Section("Summary", text=text, rows=rows)]
    epochs = max((len(r["history"]) for r in results["variants"].values()), default=0)
    if epochs:
        series = {t: [h["loss"] for h in r["history"]] + [None] * (epochs - len(r["history"]))
                  for t, r in results["variants"].items()}
        png = plots.curves(list(range(1, epochs + 1)), series, Path(folder.path) / "loss.png", "epoch",
                           "training loss", "Training loss per variant")
        sections.append(Section("Training loss", images=[png]))
    grid = Path(folder.path) / "mapping.png"
    if any("mapped_names" in r for r in results["variants"].values()):
        sections.append(Section("Label mapping (Figure 6.4)",
                                text="Source class chosen for each target class.",
                                rows=mapping_rows(results), images=[grid] if grid.is_file() else []))
    write_report(folder.path, f"Visual prompting report: {results['dataset']}", sections)
