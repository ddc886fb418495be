"""The report of recipe ``kind: visual_prompt`` (`madapt.prompting.visual`, seed 000 ch. 6).

Always: the accuracy table per variant (Tables 6.3–6.8 in miniature: test accuracy at the
best-validation epoch and at the last epoch, the eq. 6.10 average cost, trainable values and their
share of the encoder as Table 6.11 counts them, seconds per epoch), the training-loss and
validation-accuracy curves, the mapping table and Figure 6.4. When the run holds what they compare:
Table 6.9 (solver × cost of OTLM variants), Table 6.10 (accuracy and s/epoch per training share),
Figure 6.2 (gain over VP vs images per class), Figure 6.3 (gain and cost per source model) and
Figure 6.5 (class-average logits under FLM vs OTLM at the first epoch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from madapt.prompting import visual_figures as figures
from madapt.report import plots
from madapt.report.markdown import Section, write_report
from madapt.report.tables import print_table
from madapt.runs import load_tensors

DESCRIPTIONS = {
    "hardcoded": "VP (hard-coded)",
    "random": "random",
    "flm": "FLM",
    "ilm": "ILM",
    "otlm": "OTLM",
    "full_finetune": "FF (new head)",
    "linear_probe": "LP (new head)",
}
FIGURES = {
    "figure_6_2": "Figure 6.2: gain over VP vs images per class",
    "figure_6_3": "Figure 6.3: source models (gain over VP and average cost)",
    "figure_6_4": "Figure 6.4: label mapping",
    "figure_6_5": "Figure 6.5: FLM vs OTLM at the first epoch",
}


def _fmt(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    entries = results["variants"]
    several_sources = len({e.get("backbone") for e in entries.values()}) > 1
    several_shares = len({e.get("shots_fraction") for e in entries.values()}) > 1
    rows = []
    for tag, r in entries.items():
        seconds = [h["seconds"] for h in r["history"]]
        row: dict[str, Any] = {"variant": tag, "method": DESCRIPTIONS.get(r["name"], r["name"])}
        if several_sources:
            row["source"] = r.get("backbone")
        if several_shares:
            row["images/class"] = round(r["train_images"] / len(results["classnames"]), 1)
        encoder = r.get("encoder_params")
        row.update(
            {
                "refresh": r.get("mapping_source") or "-",
                "test @ best val (%)": r["accuracy"],
                "test @ last (%)": r.get("final_accuracy"),
                "epoch": r.get("best_epoch") or len(r["history"]),
                "avg cost (eq. 6.10)": _fmt(r.get("ot_cost")),
                "trainable": r["trainable_params"],
                "x encoder": _fmt(r["trainable_params"] / encoder, 4) if encoder else None,
                "s/epoch": float(np.median(seconds)) if seconds else None,
            }
        )
        rows.append(row)
    return rows


def ablation_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Table 6.9: OTLM variants with distinct (solver, cost), when there are at least two."""
    seen: dict[tuple[str, str], float] = {}
    for r in results["variants"].values():
        options = r.get("options") or {}
        if r["name"] == "otlm" and "solver" in options:
            seen.setdefault((options["solver"], options["cost"]), r["accuracy"])
    if len(seen) < 2:
        return []
    solver = {
        "greedy": "Greedy",
        "lsa": "Linear programming (lsa)",
        "emd": "Linear programming (emd)",
        "partial": "Partial OT (POT)",
    }
    return [
        {"algorithm": solver[s], "cost matrix": {"ot": "OT", "frequency": "Frequency"}[c], "accuracy (%)": a}
        for (s, c), a in seen.items()
    ]


def share_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Table 6.10: accuracy (s/epoch) of each mapper at each training share, when there are two."""
    groups = figures._groups(results, "shots_fraction")
    if len(groups) < 2:
        return []
    shares = sorted(groups, reverse=True)
    names = [n for n in (*figures.MAPPERS, "hardcoded") if any(n in g for g in groups.values())]
    per_class = {
        f: next(iter(groups[f].values()))["train_images"] / len(results["classnames"]) for f in shares
    }
    rows = []
    for name in names:
        row: dict[str, Any] = {"method": DESCRIPTIONS.get(name, name)}
        for f in shares:
            e = groups[f].get(name)
            head = f"{100 * f:g}% ({round(per_class[f], 1)}/class)"
            seconds = [h["seconds"] for h in e["history"]] if e else []
            row[head] = f"{e['accuracy']:.1f} ({np.median(seconds):.2f} s)" if e else "-"
        rows.append(row)
    return rows


def mapping_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    mapped = {t: r["mapped_names"] for t, r in results["variants"].items() if "mapped_names" in r}
    return [
        {"target": name, **{t: names[j] for t, names in mapped.items()}}
        for j, name in enumerate(results["classnames"])
    ]


def write_figures(results: dict[str, Any], data: Any, folder: Path) -> dict[str, str]:
    """Draw the figures the run's variants allow; returns {figure key: file name}."""
    drawn = {
        "figure_6_2": figures.gain_vs_scale(results, folder / "figure_6_2.png"),
        "figure_6_3": figures.source_scale(results, folder / "figure_6_3.png"),
        "figure_6_4": figures.mapping_grid(results, data, folder / "mapping.png"),
    }
    logits = folder / "initial_logits.safetensors"
    if logits.is_file():
        drawn["figure_6_5"] = figures.logits_explained(
            results, load_tensors(logits)["mean_logits"], folder / "figure_6_5.png"
        )
    return {k: Path(p).name for k, p in drawn.items() if p is not None}


def _curves(results: dict[str, Any], key: str, folder: Path, ylabel: str, title: str) -> Path | None:
    variants = {t: r for t, r in results["variants"].items() if r["history"] and key in r["history"][0]}
    if not variants:
        return None
    epochs = max(len(r["history"]) for r in variants.values())
    series = {
        t: [h[key] for h in r["history"]] + [None] * (epochs - len(r["history"])) for t, r in variants.items()
    }
    return plots.curves(list(range(1, epochs + 1)), series, folder / f"{key}.png", "epoch", ylabel, title)


def report(results: dict[str, Any], folder: Any, console: Console) -> None:
    """Terminal table + report.md (the tables and figures listed in the module docstring)."""
    path = Path(folder.path)
    rows = summary_rows(results)
    title = f"Visual prompting on {results['dataset']} ({results['backbone']}): test accuracy"
    print_table(title, rows, console=console)
    val = results.get("val_images", 0)
    text = (
        f"{results['train_images']} training images, {val} validation images, "
        f"{len(results['classnames'])} target classes, {results['n_source']} source classes, prompt "
        f"'{results.get('prompt')}'. test @ best val: test accuracy at the epoch with the best validation "
        "accuracy (the epoch column; the last epoch when there is no validation split); test @ last: at the "
        "last epoch. refresh: how ILM/OTLM recompute the mapping (extra_pass: an extra forward pass over "
        "the training set; train_pass: from the training forward passes). avg cost: the eq. 6.10 cost of "
        "the mapping per target class (the same cost matrix for every mapper, so comparable). trainable: "
        "values training changes; x encoder: their share of the encoder's parameters (Table 6.11)."
    )
    sections = [Section("Summary", text=text, rows=rows)]
    if ablation_rows(results):
        sections.append(Section("Table 6.9: solver x cost matrix", rows=ablation_rows(results)))
    if share_rows(results):
        sections.append(
            Section(
                "Table 6.10: share of the training data",
                text="accuracy (%) and median seconds per epoch",
                rows=share_rows(results),
            )
        )
    curves = [
        _curves(results, "loss", path, "training loss", "Training loss per variant"),
        _curves(results, "val_accuracy", path, "validation accuracy (%)", "Validation accuracy"),
    ]
    sections.append(Section("Training", images=[c for c in curves if c is not None]))
    drawn = results.get("figures", {})
    if any("mapped_names" in r for r in results["variants"].values()):
        images = [path / drawn["figure_6_4"]] if "figure_6_4" in drawn else []
        sections.append(
            Section(
                FIGURES["figure_6_4"],
                text="Source class chosen for each target class.",
                rows=mapping_rows(results),
                images=images,
            )
        )
    for key in ("figure_6_2", "figure_6_3", "figure_6_5"):
        if key in drawn:
            sections.append(Section(FIGURES[key], images=[path / drawn[key]]))
    write_report(folder.path, f"Visual prompting report: {results['dataset']}", sections)
