"""Turn a (n_source, n_target) cost matrix into a label mapping (seed 000, §6.4.3).

Every solver returns ``mapping``: an int64 array of length n_target whose entry ``j`` is the
source class assigned to target class ``j``; entries are distinct. With ``per_target=k > 1``
(AutoVP's ``out_map_num``, several source classes per target, their logits averaged) the result
is an (n_target, k) array, row ``j`` listing target ``j``'s sources by increasing cost, and all
n_target·k entries are distinct. Solvers:

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

With k sources per target, ``lsa`` solves the assignment on the cost with every target column
repeated k times (the exact optimum of "k distinct sources per target, each source used once"),
``greedy`` is ILM-VP's ``mlm_num`` loop (a column leaves the search once it holds k pairs), and the
POT solvers give each target mass k/n_source and read the k largest plan entries of its column.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from madapt.errors import ConfigError, DataError, closest

DEFAULT_NUM_ITERMAX = 100_000_000


def check_cost(cost: np.ndarray, per_target: int = 1) -> np.ndarray:
    """Validate a cost matrix: 2-D, finite, at least ``per_target`` source rows per target column."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[1] < 1:
        raise DataError("label mapping cost", f"shape {cost.shape}", "a 2-D (n_source, n_target) matrix")
    n_source, n_target = cost.shape
    if per_target < 1:
        raise ConfigError("label mapping sources_per_class", str(per_target), "at least 1")
    if n_target * per_target > n_source:
        if per_target == 1:
            raise ConfigError(
                "label mapping",
                f"{n_target} target classes but only {n_source} source classes",
                "n_target <= n_source for a one-to-one mapping",
            )
        raise ConfigError(
            "label mapping sources_per_class",
            f"{per_target} sources for each of {n_target} target classes but only {n_source} source classes",
            "n_target * sources_per_class <= n_source",
        )
    if not np.isfinite(cost).all():
        raise DataError("label mapping cost", "non-finite entries (nan or inf)", "finite costs")
    return cost


def _by_cost(cost: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """(n_target, k) sources with each row sorted by (cost, source index); (n_target,) when k = 1."""
    if sources.shape[1] == 1:
        return sources[:, 0].copy()
    values = cost[sources, np.arange(cost.shape[1])[:, None]]
    order = np.lexsort((sources, values), axis=1)
    return np.take_along_axis(sources, order, axis=1)


def solve_lsa(cost: np.ndarray, per_target: int = 1) -> np.ndarray:
    """Exact minimum-cost injective mapping (eq. 6.11) via the Hungarian-type solver of scipy."""
    cost = check_cost(cost, per_target)
    n_target = cost.shape[1]
    # k sources per target = one target column per source slot; scipy is several times faster
    # with the short side as rows (n_target·k, n_source).
    slots = np.repeat(cost.T, per_target, axis=0) if per_target > 1 else cost.T
    slot_idx, source_idx = linear_sum_assignment(slots)
    sources = np.empty(n_target * per_target, dtype=np.int64)
    sources[slot_idx] = source_idx
    return _by_cost(cost, sources.reshape(n_target, per_target))


def solve_greedy(cost: np.ndarray, per_target: int = 1) -> np.ndarray:
    """ILM-VP's greedy selection on a cost (smallest first), without rescanning the matrix.

    Equivalent to n_target·k rounds of "argmin over the remaining matrix, drop that row; drop the
    column once it holds k pairs" (ILM-VP's ``mlm_num`` = k): each target column keeps a pointer
    into its rows sorted by (cost, row index); a round looks only at the free column heads, so the
    work is one sort plus O(k·n_target²). Ties go to the lowest flat (row-major) index.
    """
    cost = check_cost(cost, per_target)
    n_source, n_target = cost.shape
    order = np.argsort(cost.T, axis=1, kind="stable")  # (n_target, n_source): rows by cost then index
    head = np.zeros(n_target, dtype=np.int64)
    row_taken = np.zeros(n_source, dtype=bool)
    filled = np.zeros(n_target, dtype=np.int64)
    sources = np.empty((n_target, per_target), dtype=np.int64)
    cols = np.arange(n_target)
    for _ in range(n_target * per_target):
        free = cols[filled < per_target]
        rows = order[free, head[free]]
        stale = row_taken[rows]
        while stale.any():  # skip rows already given to a target
            head[free[stale]] += 1
            rows = order[free, head[free]]
            stale = row_taken[rows]
        values = cost[rows, free]
        best = values == values.min()
        flat = rows[best] * n_target + free[best]
        pick = int(np.argmin(flat))
        row, col = int(rows[best][pick]), int(free[best][pick])
        sources[col, filled[col]] = row
        filled[col] += 1
        row_taken[row] = True
    return sources[:, 0].copy() if per_target == 1 else sources


def plan_to_mapping(plan: np.ndarray, per_target: int = 1) -> np.ndarray:
    """Mapping from a (n_source, n_target) transport plan: the ``per_target`` largest entries of
    each target column, kept injective (a max-weight assignment on the plan if they collide)."""
    plan = np.asarray(plan, dtype=np.float64)
    n_target = plan.shape[1]
    sources = np.argsort(-plan, axis=0, kind="stable")[:per_target].T.astype(np.int64)  # (n_target, k)
    if len(np.unique(sources)) < sources.size:
        slots = np.repeat(-plan.T, per_target, axis=0)
        slot_idx, source_idx = linear_sum_assignment(slots)
        flat = np.empty(n_target * per_target, dtype=np.int64)
        flat[slot_idx] = source_idx
        sources = flat.reshape(n_target, per_target)
    return _by_cost(-plan, sources)


def _uniform_masses(n_source: int, n_target: int, per_target: int) -> tuple[np.ndarray, np.ndarray]:
    """Thesis masses p_i = 1/n_source and q_j = k/n_source (§6.4.1; k = 1 there)."""
    return np.full(n_source, 1.0 / n_source), np.full(n_target, per_target / n_source)


def solve_emd(cost: np.ndarray, per_target: int = 1, num_itermax: int = DEFAULT_NUM_ITERMAX) -> np.ndarray:
    """Partial OT of eq. 6.11 as balanced OT with a zero-cost dummy target, solved by `ot.emd`."""
    import ot  # POT is imported lazily: only the optional solvers need it

    cost = check_cost(cost, per_target)
    n_source, n_target = cost.shape
    p, q = _uniform_masses(n_source, n_target, per_target)
    q_dummy = np.append(q, max(1.0 - q.sum(), 0.0))
    cost_dummy = np.hstack([cost, np.zeros((n_source, 1))])
    plan, log = ot.emd(p, q_dummy, cost_dummy, numItermax=num_itermax, log=True)
    if log.get("warning"):
        raise ConfigError(
            "label mapping solver 'emd'",
            f"POT stopped early: {log['warning']}",
            f"convergence within num_itermax={num_itermax} (raise num_itermax)",
        )
    return plan_to_mapping(plan[:, :n_target], per_target)


def solve_partial(
    cost: np.ndarray, per_target: int = 1, num_itermax: int = DEFAULT_NUM_ITERMAX
) -> np.ndarray:
    """Partial OT of eq. 6.4–6.5 with POT's `partial_wasserstein`, mass m = k·n_target / n_source."""
    import ot

    cost = check_cost(cost, per_target)
    n_source, n_target = cost.shape
    p, q = _uniform_masses(n_source, n_target, per_target)
    try:
        plan = ot.partial.partial_wasserstein(p, q, cost, m=min(float(q.sum()), 1.0), numItermax=num_itermax)
    except ValueError as exc:  # POT reports a failed network simplex as ValueError
        raise ConfigError(
            "label mapping solver 'partial'",
            f"POT failed: {exc}",
            f"convergence within num_itermax={num_itermax} (raise num_itermax)",
        ) from exc
    return plan_to_mapping(plan, per_target)


SOLVERS: dict[str, Callable[..., np.ndarray]] = {
    "lsa": solve_lsa,
    "greedy": solve_greedy,
    "emd": solve_emd,
    "partial": solve_partial,
}


def check_solver_name(solver: str) -> str:
    if solver not in SOLVERS:
        raise ConfigError(
            "label mapping solver", f"'{solver}'" + closest(solver, SOLVERS), "one of: " + ", ".join(SOLVERS)
        )
    return solver


def solve(cost: np.ndarray, solver: str = "lsa", per_target: int = 1) -> np.ndarray:
    """Mapping minimising the total cost of the chosen pairs: (n_target,) distinct source indices,
    or (n_target, per_target) when each target reads several sources."""
    return SOLVERS[check_solver_name(solver)](cost, per_target)


def mapping_cost(cost: np.ndarray, mapping: np.ndarray) -> float:
    """Total transport cost ⟨C, T⟩ (eq. 6.5) of a mapping: the sum over every chosen pair."""
    cost = np.asarray(cost, dtype=np.float64)
    sources = np.asarray(mapping).reshape(cost.shape[1], -1)
    return float(cost[sources, np.arange(cost.shape[1])[:, None]].sum())
