"""The continual recipe's report: terminal table, report.md, accuracy heatmaps, the CIL curve."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from madapt.report import plots
from madapt.report.markdown import Section, write_report
from madapt.report.tables import print_table
from madapt.runs import RunFolder


def report(results: dict[str, Any], folder: RunFolder, console: Console) -> None:
    """Terminal table + report.md with the per-dataset rows and one accuracy heatmap per method."""
    if results.get("protocol") == "cil":
        return _report_cil(results, folder, console)
    order = results["order"]
    rows = [
        {"method": name, "Transfer": r["transfer"], "Avg": r["avg"], "Last": r["last"]}
        for name, r in results["methods"].items()
    ]
    print_table("Continual learning: Transfer / Avg / Last (%)", rows, console=console)
    sections = [Section("Summary", text=f"Task order: {', '.join(order)}.", rows=rows)]
    if results.get("zero_shot"):
        sections.append(
            Section(
                "Zero-shot accuracy of the pretrained model",
                rows=[{"dataset": d, "accuracy": a} for d, a in zip(order, results["zero_shot"])],
            )
        )
    sections += _summaries(results)
    for name, r in results["methods"].items():
        png = plots.accuracy_heatmap(
            r["accuracy"],
            order,
            folder.path / f"heatmap_{name}.png",
            title=f"{name}: accuracy after each task (%)",
        )
        per = r["per_dataset"]
        sections.append(
            Section(
                name,
                rows=[
                    {
                        "dataset": d,
                        "Transfer": per["transfer"][j],
                        "Avg": per["avg"][j],
                        "Last": per["last"][j],
                    }
                    for j, d in enumerate(order)
                ],
                images=[png],
            )
        )
    write_report(folder.path, "Continual learning report", sections)


def _report_cil(results: dict[str, Any], folder: RunFolder, console: Console) -> None:
    """CIL: average incremental accuracy and last step, plus the accuracy curve over steps."""
    rows = [{"method": name, "Avg": r["avg"], "Last": r["last"]} for name, r in results["methods"].items()]
    print_table("Class-incremental learning: Avg / Last (%)", rows, console=console)
    steps = list(range(1, len(results["order"]) + 1))
    png = plots.curves(
        steps,
        {n: r["step_accuracy"] for n, r in results["methods"].items()},
        folder.path / "cil_curve.png",
        "step",
        "accuracy on seen classes (%)",
        "CIL accuracy",
    )
    write_report(
        folder.path,
        "Class-incremental learning report",
        [Section("Summary", text=f"{len(steps)} steps.", rows=rows, images=[png]), *_summaries(results)],
    )


def _summaries(results: dict[str, Any]) -> list[Section]:
    """One table per method that reported figures (`ContinualMethod.summary`); nested dicts become rows."""
    sections = []
    for name, r in results["methods"].items():
        summary = r.get("summary") or {}
        if not summary:
            continue
        tables = {k: v for k, v in summary.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        flat = {k: v for k, v in summary.items() if k not in tables}
        if flat:
            sections.append(
                Section(f"{name}: details", rows=[{"quantity": k, "value": v} for k, v in flat.items()])
            )
        for title, rows in tables.items():
            sections.append(Section(f"{name}: {title}", rows=rows))
    return sections
