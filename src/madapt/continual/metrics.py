"""MTIL and CIL metrics (seed 000, §3.5.1 Eq. 3.14; ZSCL `results.ipynb::statistics`).

MTIL: ``acc[i][j]`` is the accuracy (%) on the j-th dataset *in training order* after training
task i, so row i is one evaluation sweep and the diagonal holds each dataset right after it was
learned. The three numbers every MTIL table reports are:

- **Transfer**: for datasets 2..T, the mean of the column entries strictly above the diagonal
  (its accuracy at every step before it is trained: zero-shot transfer), then the mean over those
  T-1 datasets. Dataset 1 is never unseen, so it has no Transfer value.
- **Avg**: per dataset the mean of its whole column (before, while and after learning it), then
  the mean over datasets; equal to the mean of all T² entries.
- **Last**: the mean of the final row.

We follow ZSCL's code rather than the literal Eq. 3.14 of seed 000, whose inner Transfer sum runs
to the diagonal while dividing by j-1; ZSCL's code and every number printed in the seed's tables
(e.g. Table 3.5) use the strict upper triangle.

CIL (seed 000 §3.5.6, Table 3.10): accuracy on all classes seen so far after each incremental
step; "Avg" is the mean over steps (average incremental accuracy), "Last" the final step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_matrix(acc: Any) -> np.ndarray:
    arr = np.asarray(acc, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"accuracy matrix must be square T x T; got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"MTIL metrics need at least 2 tasks; got a {arr.shape[0]} x {arr.shape[1]} matrix")
    if not np.all(np.isfinite(arr)):
        raise ValueError("accuracy matrix has non-finite entries (NaN or inf)")
    return arr


def mtil_metrics(acc: Sequence[Sequence[float]] | np.ndarray) -> dict[str, Any]:
    """Transfer / Avg / Last of a T×T MTIL accuracy matrix (seed 000 Eq. 3.14, ZSCL definition).

    Returns ``{"transfer", "avg", "last"}`` as Python floats (%) and ``"per_dataset"`` with three
    lists of length T. ``per_dataset["transfer"][0]`` is ``None`` (the first dataset is trained
    before it is ever evaluated unseen; ``None`` keeps results JSON-clean, unlike NaN); the
    Transfer mean is over datasets 2..T.
    """
    arr = _as_matrix(acc)
    n_tasks = arr.shape[0]
    # Column j's entries above the diagonal are rows 0..j-1: the steps before task j is trained.
    transfer_cols = [float(arr[:j, j].mean()) for j in range(1, n_tasks)]
    avg_cols = arr.mean(axis=0)
    last_row = arr[-1]
    return {
        "transfer": float(np.mean(transfer_cols)),
        "avg": float(avg_cols.mean()),
        "last": float(last_row.mean()),
        "per_dataset": {
            "transfer": [None, *transfer_cols],
            "avg": [float(x) for x in avg_cols],
            "last": [float(x) for x in last_row],
        },
    }


def cil_metrics(step_acc: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Average incremental accuracy and last-step accuracy (%) of a class-incremental run.

    ``step_acc[k]`` is the accuracy on all classes seen so far after incremental step k
    (seed 000 §3.5.6 / Table 3.10 "Avg." and "Last").
    """
    arr = np.asarray(step_acc, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"step accuracies must be a non-empty 1-D sequence; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("step accuracies have non-finite entries (NaN or inf)")
    return {"avg": float(arr.mean()), "last": float(arr[-1])}
