"""Turn a (n_source, n_target) cost matrix into a one-to-one label mapping (seed 000, §6.4.3).

Every solver returns ``mapping``: an int64 array of length n_target whose entry ``j`` is the
source class assigned to target class ``j``; entries are distinct. Solvers:

- ``lsa``: exact rectangular assignment with `scipy.optimize.linear_sum_assignment`. With
  uniform masses the partial OT problem of eq. 6.11 is totally unimodular, so its optimum is an
  injective 0/1 plan and this is the exact OTLM solution (the fast path).
- ``emd``: the same LP solved as full OT by POT's network simplex, `ot.emd`, with the thesis'
  masses (p_i = q_j = 1/n_source, §6.4.1) and one dummy target that absorbs the unused source
  mass at zero cost.
- ``partial``: POT's `ot.partial.partial_wasserstein` with the same masses and transported mass
  m = n_target / n_source (eq. 6.4–6.5 literally).
- ``greedy``: the ILM-VP selection (§6.4.4): repeatedly take the globally best remaining
  (source, target) pair and remove its row and column. Ties go to the lowest flat index in
  row-major (source, target) order, like ``argmax`` over ILM-VP's flattened frequency matrix.

For the two POT solvers the mapping is read off the transport plan by the argmax of each target
column; network simplex returns a vertex of the polytope, which is a permutation-like plan, but if
the argmaxes ever collide (degenerate plan) they are resolved by a max-weight assignment on the
plan so the mapping stays injective.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from madapt.errors import ConfigError, DataError, closest

DEFAULT_NUM_ITERMAX = 100_000_000


def check_cost(cost: np.ndarray) -> np.ndarray:
    """Validate a cost matrix: 2-D, finite, at least as many source rows as target columns."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[1] < 1:
        raise DataError("label mapping cost", f"shape {cost.shape}", "a 2-D (n_source, n_target) matrix")
    n_source, n_target = cost.shape
    if n_target > n_source:
        raise ConfigError("label mapping", f"{n_target} target classes but only {n_source} source classes",
                          "n_target <= n_source for a one-to-one mapping")
    if not np.isfinite(cost).all():
        raise DataError("label mapping cost", "non-finite entries (nan or inf)", "finite costs")
    return cost


def solve_lsa(cost: np.ndarray) -> np.ndarray:
    """Exact minimum-cost injective mapping (eq. 6.11) via the Hungarian-type solver of scipy."""
    cost = check_cost(cost)
    # scipy is several times faster with the short side as rows (n_target, n_source).
    target_idx, source_idx = linear_sum_assignment(cost.T)
    mapping = np.empty(cost.shape[1], dtype=np.int64)
    mapping[target_idx] = source_idx
    return mapping


def solve_greedy(cost: np.ndarray) -> np.ndarray:
    """ILM-VP's greedy one-to-one selection on a cost (smallest first), without rescanning the matrix.

    Equivalent to n_target rounds of "argmin over the remaining matrix, drop that row and column":
    each target column keeps a pointer into its rows sorted by (cost, row index); a round looks
    only at the n_target column heads, so the work is one sort plus O(n_target²).
    """
    cost = check_cost(cost)
    n_source, n_target = cost.shape
    order = np.argsort(cost.T, axis=1, kind="stable")  # (n_target, n_source): rows by cost then index
    head = np.zeros(n_target, dtype=np.int64)
    row_taken = np.zeros(n_source, dtype=bool)
    col_free = np.ones(n_target, dtype=bool)
    mapping = np.empty(n_target, dtype=np.int64)
    cols = np.arange(n_target)
    for _ in range(n_target):
        free = cols[col_free]
        rows = order[free, head[free]]
        stale = row_taken[rows]
        while stale.any():  # skip rows already given to another target
            head[free[stale]] += 1
            rows = order[free, head[free]]
            stale = row_taken[rows]
        values = cost[rows, free]
        best = values == values.min()
        flat = rows[best] * n_target + free[best]
        pick = int(np.argmin(flat))
        row, col = int(rows[best][pick]), int(free[best][pick])
        mapping[col] = row
        row_taken[row] = True
        col_free[col] = False
    return mapping


def plan_to_mapping(plan: np.ndarray) -> np.ndarray:
    """Mapping from a (n_source, n_target) transport plan: argmax per target column, kept injective."""
    plan = np.asarray(plan, dtype=np.float64)
    mapping = plan.argmax(axis=0).astype(np.int64)
    if len(np.unique(mapping)) < len(mapping):
        target_idx, source_idx = linear_sum_assignment(-plan.T)
        mapping[target_idx] = source_idx
    return mapping


def _uniform_masses(n_source: int, n_target: int) -> tuple[np.ndarray, np.ndarray]:
    """Thesis masses p_i = q_j = 1/n_source (§6.4.1)."""
    return np.full(n_source, 1.0 / n_source), np.full(n_target, 1.0 / n_source)


def solve_emd(cost: np.ndarray, num_itermax: int = DEFAULT_NUM_ITERMAX) -> np.ndarray:
    """Partial OT of eq. 6.11 as balanced OT with a zero-cost dummy target, solved by `ot.emd`."""
    import ot  # POT is imported lazily: only the optional solvers need it

    cost = check_cost(cost)
    n_source, n_target = cost.shape
    p, q = _uniform_masses(n_source, n_target)
    q_dummy = np.append(q, 1.0 - q.sum())
    cost_dummy = np.hstack([cost, np.zeros((n_source, 1))])
    plan, log = ot.emd(p, q_dummy, cost_dummy, numItermax=num_itermax, log=True)
    if log.get("warning"):
        raise ConfigError("label mapping solver 'emd'", f"POT stopped early: {log['warning']}",
                          f"convergence within num_itermax={num_itermax} (raise num_itermax)")
    return plan_to_mapping(plan[:, :n_target])


def solve_partial(cost: np.ndarray, num_itermax: int = DEFAULT_NUM_ITERMAX) -> np.ndarray:
    """Partial OT of eq. 6.4–6.5 with POT's `partial_wasserstein`, mass m = n_target / n_source."""
    import ot

    cost = check_cost(cost)
    n_source, n_target = cost.shape
    p, q = _uniform_masses(n_source, n_target)
    try:
        plan = ot.partial.partial_wasserstein(p, q, cost, m=float(q.sum()), numItermax=num_itermax)
    except ValueError as exc:  # POT reports a failed network simplex as ValueError
        raise ConfigError("label mapping solver 'partial'", f"POT failed: {exc}",
                          f"convergence within num_itermax={num_itermax} (raise num_itermax)") from exc
    return plan_to_mapping(plan)


SOLVERS: dict[str, Callable[..., np.ndarray]] = {
    "lsa": solve_lsa,
    "greedy": solve_greedy,
    "emd": solve_emd,
    "partial": solve_partial,
}


def check_solver_name(solver: str) -> str:
    if solver not in SOLVERS:
        raise ConfigError("label mapping solver", f"'{solver}'" + closest(solver, SOLVERS),
                          "one of: " + ", ".join(SOLVERS))
    return solver


def solve(cost: np.ndarray, solver: str = "lsa") -> np.ndarray:
    """Mapping (length n_target, distinct source indices) minimising Σ_j cost[mapping[j], j]."""
    return SOLVERS[check_solver_name(solver)](cost)


def mapping_cost(cost: np.ndarray, mapping: np.ndarray) -> float:
    """Total transport cost ⟨C, T⟩ (eq. 6.5) of a one-to-one mapping."""
    cost = np.asarray(cost, dtype=np.float64)
    return float(cost[np.asarray(mapping), np.arange(cost.shape[1])].sum())
