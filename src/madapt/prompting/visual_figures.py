"""The figures of seed 000 ch. 6 drawn from one ``visual_prompt`` run (Agg canvas, PNG files).

Each function returns the file it wrote, or None when the run lacks what the figure compares:

- Figure 6.2 `gain_vs_scale`: accuracy gain of each label mapper over VP (hard-coded) against the
  training images per class. The thesis orders its ten datasets by that scale; a run holds one
  dataset, so its points are the variants' ``shots_fraction`` settings (at least two).
- Figure 6.3 `source_scale`: gain over VP and average cost per mapper for each source model (IN-1K
  vs IN-22K ViT-B on CUB-200 in the thesis; at least two ``backbone`` settings). The average cost
  is the eq. 6.10 cost of the mapping per target class, the same matrix for every mapper.
- Figure 6.4 `mapping_grid`: a training image of each target class over the source class each
  mapper chose for it.
- Figure 6.5 `logits_explained`: class-average source logits under the initial prompt (first
  epoch): (a) the target class where FLM's and OTLM's choices differ the most, both choices marked;
  (b) the other target class with the highest logit at FLM's choice; (c), (d) the first class's
  logits at the source classes FLM and OTLM selected for all targets.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from madapt.report import plots

MAX_GRID_CLASSES = 16
MAPPERS = ("flm", "ilm", "otlm")


def _groups(results: dict[str, Any], key: str) -> dict[Any, dict[str, dict[str, Any]]]:
    """Variants grouped by ``key`` (backbone or shots_fraction), each group by mapper name (the
    first variant of each); the other of the two stays at the run's main setting."""
    other = {"backbone": "shots_fraction", "shots_fraction": "backbone"}[key]
    groups: dict[Any, dict[str, dict[str, Any]]] = {}
    for entry in results["variants"].values():
        if entry.get(other, results.get(other)) == results.get(other):
            groups.setdefault(entry.get(key), {}).setdefault(entry["name"], entry)
    return groups


def gain_vs_scale(results: dict[str, Any], path: Path) -> Path | None:
    groups = {f: g for f, g in _groups(results, "shots_fraction").items() if "hardcoded" in g}
    if len(groups) < 2:
        return None
    n_classes = len(results["classnames"])
    fractions = sorted(groups, key=lambda f: groups[f]["hardcoded"]["train_images"])
    xs = [groups[f]["hardcoded"]["train_images"] / n_classes for f in fractions]
    series = {
        m.upper(): [
            groups[f][m]["accuracy"] - groups[f]["hardcoded"]["accuracy"] if m in groups[f] else None
            for f in fractions
        ]
        for m in MAPPERS
        if any(m in groups[f] for f in fractions)
    }
    if not series:
        return None
    fig = plots.curves_figure(
        xs,
        series,
        "training images per class",
        "accuracy gain over VP (points)",
        f"Figure 6.2: gain over VP vs data scale ({results['dataset']})",
    )
    fig.axes[0].set_xscale("log")
    return plots.save_png(fig, path)


def source_scale(results: dict[str, Any], path: Path) -> Path | None:
    groups = {b: g for b, g in _groups(results, "backbone").items() if "hardcoded" in g}
    if len(groups) < 2:
        return None
    names = list(groups)
    mappers = [m for m in MAPPERS if any(m in g for g in groups.values())]
    fig = plots._new_figure(10.0, 4.0)
    gain_ax, cost_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.8 / max(len(names), 1)
    for i, b in enumerate(names):
        g = groups[b]
        xs = np.arange(len(mappers)) + i * width
        gain = [g[m]["accuracy"] - g["hardcoded"]["accuracy"] if m in g else np.nan for m in mappers]
        cost = [g[m]["ot_cost"] if m in g and g[m].get("ot_cost") is not None else np.nan for m in mappers]
        gain_ax.bar(xs, gain, width, label=b)
        cost_ax.bar(xs, cost, width, label=b)
    for ax, label in ((gain_ax, "accuracy gain over VP (points)"), (cost_ax, "average cost (eq. 6.10)")):
        ax.set_xticks(np.arange(len(mappers)) + width * (len(names) - 1) / 2, [m.upper() for m in mappers])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    gain_ax.legend(fontsize=7)
    fig.suptitle(f"Figure 6.3: source models compared on {results['dataset']}")
    return plots.save_png(fig, path)


def mapping_grid(results: dict[str, Any], data: Any, path: Path) -> Path | None:
    mapped = {t: r["mapped_names"] for t, r in results["variants"].items() if "mapped_names" in r}
    if not mapped:
        return None
    labels = np.asarray(data.train.targets)
    n = min(len(data.classnames), MAX_GRID_CLASSES)
    fig = plots._new_figure(1.25 * n + 1.2, 1.3 + 0.42 * len(mapped))
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, 0.35 * len(mapped)])
    for j in range(n):
        ax = fig.add_subplot(grid[0, j])
        ax.set_axis_off()
        ax.set_title(textwrap.shorten(data.classnames[j], 14), fontsize=8)
        if (labels == j).any():
            image = data.train[int(np.flatnonzero(labels == j)[0])][0]
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        text = fig.add_subplot(grid[1, j])
        text.set_axis_off()
        for row, (tag, names) in enumerate(mapped.items()):
            y = 1 - (row + 0.5) / len(mapped)
            text.text(
                0.5,
                y,
                textwrap.shorten(names[j], 16),
                ha="center",
                va="center",
                fontsize=7,
                transform=text.transAxes,
            )
            if j == 0:  # row labels: the variant that chose this row's source classes
                text.text(
                    -0.15,
                    y,
                    tag,
                    ha="right",
                    va="center",
                    fontsize=7,
                    weight="bold",
                    transform=text.transAxes,
                )
    fig.suptitle(
        f"Figure 6.4: {results['dataset']}: target class example and the source class each mapper chose",
        fontsize=9,
    )
    return plots.save_png(fig, path)


def _first_sources(mapping: Any) -> np.ndarray:
    m = np.asarray(mapping)
    return m if m.ndim == 1 else m[:, 0]


def logits_explained(results: dict[str, Any], mean_logits: torch.Tensor, path: Path) -> Path | None:
    entries: dict[str, dict[str, Any]] = {}
    for e in results["variants"].values():  # the first of each mapper on the run's main source and share
        main = e.get("backbone", results.get("backbone")) == results.get("backbone") and e.get(
            "shots_fraction", results.get("shots_fraction")
        ) == results.get("shots_fraction")
        if main and e.get("initial_mapping") is not None:
            entries.setdefault(e["name"], e)
    freq = entries.get("flm") or entries.get("ilm")
    if freq is None or "otlm" not in entries:
        return None
    logits = mean_logits.numpy()
    f_map, o_map = _first_sources(freq["initial_mapping"]), _first_sources(entries["otlm"]["initial_mapping"])
    differ = np.flatnonzero(f_map != o_map)
    if len(differ) == 0:
        return None

    def rival(j: int) -> int:  # the other target class with the highest logit at FLM's choice for j
        column = logits[:, f_map[j]].copy()
        column[j] = -np.inf
        return int(column.argmax())

    j = int(max(differ, key=lambda t: logits[rival(int(t)), f_map[t]]))
    k = rival(j)
    names = results["classnames"]
    fig = plots._new_figure(11.0, 6.5)
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(4)]
    axes[0].plot(logits[j], lw=0.6, color="grey")
    axes[0].axvline(f_map[j], color="tab:blue", label=f"{freq['name'].upper()}: source {f_map[j]}")
    axes[0].axvline(o_map[j], color="tab:green", label=f"OTLM: source {o_map[j]}")
    axes[0].set_title(f"(a) '{names[j]}': average logits over the source classes", fontsize=9)
    axes[1].plot(logits[k], lw=0.6, color="grey")
    axes[1].axvline(f_map[j], color="tab:orange", label=f"{freq['name'].upper()}'s source for '{names[j]}'")
    axes[1].set_title(f"(b) '{names[k]}': average logits", fontsize=9)
    for ax, mapping, tag, colour in (
        (axes[2], f_map, f"(c) {freq['name'].upper()}", "tab:blue"),
        (axes[3], o_map, "(d) OTLM", "tab:green"),
    ):
        values = logits[j, mapping]
        bars = ax.bar(np.arange(len(mapping)), values, color="lightgrey")
        bars[j].set_color(colour)
        ax.set_title(f"{tag}: logits of '{names[j]}' at the selected sources", fontsize=9)
        ax.set_xlabel("target class (its selected source)")
    for ax in axes[:2]:
        ax.set_xlabel("source class")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_ylabel("average logit")
    fig.suptitle(f"Figure 6.5: frequency mapping vs OTLM at the first epoch ({results['dataset']})")
    return plots.save_png(fig, path)
