"""The report of ``kind: fewshot``: Tables 1-3 in miniature, Figure 3's masks and the live-token curve.

`aggregate` turns the per-(dataset, method, seed) entries into rows: test accuracy mean ± std over
seeds per dataset (sample std, n - 1; 0 for one seed), the average over datasets (its std is over
the seeds' dataset averages), validation accuracy, trainable parameters and GFLOPs per image (both
averaged over datasets and seeds, as seed 003 Table 2 averages parameters over its 11 datasets).
``select`` rows take, per dataset, the entry with the best mean validation accuracy.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from madapt.report import plots
from madapt.report.markdown import Section, write_report
from madapt.report.tables import print_table


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _row(results: dict[str, Any], chosen: dict[str, str]) -> dict[str, Any]:
    """Accuracy statistics of one label per dataset (``chosen[dataset]`` = the label used there)."""
    runs, seeds = results["runs"], [str(s) for s in results["seeds"]]
    per_dataset, per_seed = {}, {s: [] for s in seeds}
    params, flops = [], []
    for dataset, label in chosen.items():
        entries = runs[dataset][label]
        tests = [entries[s]["test"] for s in seeds]
        vals = [entries[s]["val"] for s in seeds if entries[s]["val"] is not None]
        per_dataset[dataset] = {
            **_mean_std(tests),
            "val": statistics.fmean(vals) if vals else None,
            "label": label,
        }
        for s in seeds:
            per_seed[s].append(entries[s]["test"])
            params.append(entries[s]["summary"]["trainable_params"])
            flops.append(entries[s]["gflops"]["per_image"])
    return {
        "per_dataset": per_dataset,
        "average": _mean_std([statistics.fmean(v) for v in per_seed.values()]),
        "trainable_params": statistics.fmean(params),
        "gflops": statistics.fmean(flops),
    }


def aggregate(results: dict[str, Any]) -> dict[str, Any]:
    """Rows of the summary table: one per method label, then one per ``select`` entry."""
    rows = [
        {"label": label, **_row(results, {d: label for d in results["datasets"]})}
        for label in results["labels"]
    ]
    for sel in results["select"]:
        chosen = {}
        for dataset in results["datasets"]:
            vals = {
                label: _row(results, {dataset: label})["per_dataset"][dataset]["val"]
                for label in sel["among"]
            }
            chosen[dataset] = max(
                sel["among"], key=lambda label: (vals[label] or -1.0, -sel["among"].index(label))
            )
        rows.append({"label": sel["label"], "selected": True, **_row(results, chosen)})
    return {"rows": rows}


def _fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in results["table"]["rows"]:
        line: dict[str, Any] = {
            "method": row["label"],
            "trainable params": round(row["trainable_params"]),
            "GFLOPs/image": f"{row['gflops']:.4g}",
        }
        line.update({d: _fmt(row["per_dataset"][d]) for d in results["datasets"]})
        line["average"] = _fmt(row["average"])
        out.append(line)
    return out


def val_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "method": row["label"],
            **{
                d: (
                    f"{row['per_dataset'][d]['val']:.2f}"
                    if row["per_dataset"][d]["val"] is not None
                    else None
                )
                + (f" ({row['per_dataset'][d]['label']})" if row.get("selected") else "")
                for d in results["datasets"]
            },
        }
        for row in results["table"]["rows"]
    ]


def mask_figure(summary: dict[str, Any], title: str) -> Any:
    """Figure 3: the final binary masks, one panel per tower (rows = depth, columns = context slot)."""
    towers = list(summary["masks"])
    fig = plots._new_figure(3.2 * len(towers) + 0.6, 3.4)
    for k, tower in enumerate(towers):
        mask = np.asarray(summary["masks"][tower], dtype=float)
        ax = fig.add_subplot(1, len(towers), k + 1)
        ax.imshow(mask, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"{tower}: {int(mask.sum())} live", fontsize=9)
        ax.set_xlabel("context token")
        ax.set_ylabel("layer")
        ax.set_yticks(range(mask.shape[0]), labels=[str(i + 1) for i in range(mask.shape[0])], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def _first_seed(results: dict[str, Any], dataset: str, label: str) -> dict[str, Any]:
    return results["runs"][dataset][label][str(results["seeds"][0])]


def figures(results: dict[str, Any], folder: Path) -> list[Section]:
    """Per dataset: mask heatmaps of the pruned methods, live tokens and training loss over epochs.

    (First seed.)
    """
    sections = []
    first = results["seeds"][0]
    for dataset in results["datasets"]:
        images, lengths = [], []
        for label in results["labels"]:
            entry = _first_seed(results, dataset, label)
            if "masks" in entry["summary"]:
                png = plots.save_png(
                    mask_figure(entry["summary"], f"{dataset} · {label} · seed {first}"),
                    folder / f"masks_{dataset}_{label}.png",
                )
                images.append(png)
                lengths += [
                    {"method": label, "tower": tower, **{f"L{i + 1}": n for i, n in enumerate(values)}}
                    for tower, values in entry["summary"]["lengths"].items()
                ]
        trained = {
            label: _first_seed(results, dataset, label)["history"]
            for label in results["labels"]
            if _first_seed(results, dataset, label)["history"]
        }
        if trained:
            epochs = max(len(h) for h in trained.values())
            xs = list(range(1, epochs + 1))
            pad = {label: h + [{}] * (epochs - len(h)) for label, h in trained.items()}
            live = {
                label: [e.get("live_tokens") for e in h]
                for label, h in pad.items()
                if any("live_tokens" in e for e in h)
            }
            if live:
                images.append(
                    plots.curves(
                        xs,
                        live,
                        folder / f"live_tokens_{dataset}.png",
                        "epoch",
                        "live context tokens",
                        f"{dataset}: live tokens (seed {first})",
                    )
                )
            images.append(
                plots.curves(
                    xs,
                    {label: [e.get("loss") for e in h] for label, h in pad.items()},
                    folder / f"loss_{dataset}.png",
                    "epoch",
                    "training loss",
                    f"{dataset}: training loss (seed {first})",
                )
            )
        if images:
            sections.append(
                Section(
                    f"{dataset}: context lengths and training curves",
                    rows=lengths,
                    text="Per-layer context lengths at the end of training (L1 = input side)."
                    if lengths
                    else "",
                    images=images,
                    digits=0,
                )
            )
    return sections


def report(results: dict[str, Any], folder: Any, console: Console) -> None:
    """Terminal table and report.md: accuracy mean ± std, params, GFLOPs, validation, masks and curves."""
    rows = summary_rows(results)
    seeds = ", ".join(str(s) for s in results["seeds"])
    title = f"Few-shot ({results['shots']} shots, {results['backbone']}): test accuracy (%), seeds {seeds}"
    print_table(title, rows, console=console)
    text = (
        f"{results['shots']}-shot training sets, seeds {seeds}; accuracy of the last epoch (Dassl "
        "`last_step`), mean ± sample std over seeds. GFLOPs/image: FLOPs each extra test image adds to "
        "`logits` (torch's counter, a multiply-add = 2 FLOPs). Trainable params: live parameters at the "
        "end, averaged over datasets and seeds."
    )
    sections = [
        Section("Summary", text=text, rows=rows),
        Section(
            "Validation accuracy (%)",
            text="min(K, 4) shots per class; selected rows name the entry chosen per dataset.",
            rows=val_rows(results),
        ),
    ]
    sections += figures(results, Path(folder.path))
    write_report(folder.path, "Few-shot prompt tuning report", sections)
