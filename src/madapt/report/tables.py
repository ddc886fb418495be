"""Rows of results -> a rich table on the terminal, or the same table in Markdown.

A table is a list of row dicts (``{"method": "zscl", "transfer": 68.1, ...}``); columns default to
the keys in first-seen order. Floats are shown with a fixed number of digits, ``None`` and NaN as
"–" (e.g. the first dataset's Transfer, which does not exist; seed 000 Table 3.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from madapt.continual.metrics import mtil_metrics

Row = Mapping[str, Any]
MISSING = "–"


def format_cell(value: Any, digits: int = 1) -> str:
    """One cell as text: floats to ``digits`` decimals, None/NaN as "–", anything else via str."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        value = float(value)
        return MISSING if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def column_names(rows: Sequence[Row], columns: Sequence[str] | None = None) -> list[str]:
    """``columns`` if given, else every key of every row in first-seen order."""
    if columns is not None:
        return list(columns)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def _cells(rows: Sequence[Row], columns: list[str], digits: int) -> list[list[str]]:
    return [[format_cell(row.get(col), digits) for col in columns] for row in rows]


def rich_table(
    title: str, rows: Sequence[Row], columns: Sequence[str] | None = None, digits: int = 1
) -> Table:
    """A `rich.table.Table`; numeric columns are right-aligned."""
    cols = column_names(rows, columns)
    table = Table(title=title)
    for col in cols:
        numeric = any(isinstance(r.get(col), Real) and not isinstance(r.get(col), bool) for r in rows)
        table.add_column(col, justify="right" if numeric else "left")
    for cells in _cells(rows, cols, digits):
        table.add_row(*cells)
    return table


def print_table(
    title: str,
    rows: Sequence[Row],
    columns: Sequence[str] | None = None,
    digits: int = 1,
    console: Console | None = None,
) -> None:
    """Print the rows as a rich table (on ``console``, default a new stdout console)."""
    (console or Console()).print(rich_table(title, rows, columns, digits))


def markdown_table(rows: Sequence[Row], columns: Sequence[str] | None = None, digits: int = 1) -> str:
    """The same rows as a GitHub-flavoured Markdown table (no trailing newline)."""
    cols = column_names(rows, columns)
    if not cols:
        return ""

    def line(cells: Sequence[str]) -> str:
        # A literal '|' would split the cell.
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(cols), "| " + " | ".join("---" for _ in cols) + " |"]
    out += [line(cells) for cells in _cells(rows, cols, digits)]
    return "\n".join(out)


def accuracy_matrix_rows(
    acc: Sequence[Sequence[float]] | np.ndarray, dataset_names: Sequence[str], label: str = "after"
) -> list[dict[str, Any]]:
    """Rows laid out like seed 000 Table 3.5: one per trained task, then Transfer / Avg. / Last.

    Each row is ``{label: <task or metric name>, <dataset>: value, ..., "mean": value}``; the
    matrix rows carry their row mean, the metric rows the metric's mean.
    """
    arr = np.asarray(acc, dtype=np.float64)
    names = list(dataset_names)
    if arr.shape != (len(names), len(names)):
        raise ValueError(f"accuracy matrix shape {arr.shape} does not match {len(names)} dataset names")
    metrics = mtil_metrics(arr)
    rows: list[dict[str, Any]] = []
    for task, values in zip(names, arr):
        rows.append({label: task, **dict(zip(names, map(float, values))), "mean": float(values.mean())})
    for key, title in (("transfer", "Transfer"), ("avg", "Avg."), ("last", "Last")):
        per = metrics["per_dataset"][key]
        rows.append({label: title, **dict(zip(names, per)), "mean": metrics[key]})
    return rows
