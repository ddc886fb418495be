"""Cost matrix -> one-to-one mapping (seed 000 §6.4.3, eq. 6.11; the greedy of §6.4.4)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from madapt.errors import ConfigError, DataError
from madapt.labelmap.solvers import mapping_cost, plan_to_mapping, solve


def brute_force_best(cost: np.ndarray) -> tuple[float, tuple[int, ...]]:
    n_source, n_target = cost.shape
    return min(
        (sum(cost[s, j] for j, s in enumerate(perm)), perm)
        for perm in itertools.permutations(range(n_source), n_target)
    )


def ilmvp_greedy(cost: np.ndarray) -> np.ndarray:
    """ILM-VP's loop literally: argmax of the flattened score, then drop its row and column."""
    score = (cost.max() - cost).astype(np.float64)
    n_target = cost.shape[1]
    mapping = np.empty(n_target, dtype=np.int64)
    for _ in range(n_target):
        row, col = divmod(int(score.argmax()), n_target)  # np.argmax keeps the first maximum
        mapping[col] = row
        score[row, :] = -1
        score[:, col] = -1
    return mapping


def is_injective(mapping: np.ndarray, n_source: int) -> bool:
    return len(set(mapping.tolist())) == len(mapping) and mapping.min() >= 0 and mapping.max() < n_source


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(5, 3), (6, 3), (4, 4)])
def test_lsa_is_the_brute_force_optimum(seed, shape):
    cost = np.random.default_rng(seed).random(shape)
    best_value, best_perm = brute_force_best(cost)
    mapping = solve(cost, "lsa")
    assert tuple(mapping.tolist()) == best_perm  # continuous random costs: the optimum is unique
    assert mapping_cost(cost, mapping) == pytest.approx(best_value, abs=1e-12)


@pytest.mark.parametrize("solver", ["emd", "partial"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(6, 3), (30, 10), (40, 40)])
def test_pot_solvers_reach_the_lsa_cost(solver, seed, shape):
    cost = np.random.default_rng(100 + seed).random(shape)
    reference = mapping_cost(cost, solve(cost, "lsa"))
    mapping = solve(cost, solver)
    assert is_injective(mapping, shape[0])
    assert mapping_cost(cost, mapping) == pytest.approx(reference, abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("shape", [(7, 3), (12, 12), (30, 9)])
def test_greedy_equals_the_ilmvp_loop_including_ties(seed, shape):
    # Small integer costs produce many ties, which must go to the lowest flat index as in ILM-VP.
    cost = np.random.default_rng(seed).integers(0, 4, size=shape).astype(float)
    np.testing.assert_array_equal(solve(cost, "greedy"), ilmvp_greedy(cost))


def test_greedy_is_suboptimal_where_the_assignment_is_not():
    # Greedy takes the cheapest pair (0, 0) first and is then forced into the expensive (1, 1).
    cost = np.array([[1.0, 2.0], [2.0, 10.0], [9.0, 9.0]])
    greedy, exact = solve(cost, "greedy"), solve(cost, "lsa")
    np.testing.assert_array_equal(greedy, [0, 2])
    np.testing.assert_array_equal(exact, [1, 0])
    assert mapping_cost(cost, greedy) == 10.0
    assert mapping_cost(cost, exact) == 4.0


def test_degenerate_plan_is_made_injective():
    # Both target columns put their largest mass on source 0; the read-off must not reuse it.
    plan = np.array([[0.5, 0.4], [0.3, 0.1], [0.2, 0.35]])
    mapping = plan_to_mapping(plan)
    assert is_injective(mapping, 3)
    np.testing.assert_array_equal(mapping, [0, 2])  # the max-weight injective choice: 0.5 + 0.35


def test_plain_plan_reads_argmax_per_column():
    plan = np.array([[0.0, 0.2], [0.2, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(plan_to_mapping(plan), [1, 0])


def test_more_targets_than_sources_is_a_config_error():
    with pytest.raises(ConfigError, match="n_target <= n_source"):
        solve(np.zeros((2, 3)), "lsa")


def test_non_finite_cost_is_a_data_error():
    with pytest.raises(DataError, match="finite"):
        solve(np.array([[np.nan, 0.0], [1.0, 0.0]]), "greedy")


def test_unknown_solver_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'greedy'"):
        solve(np.zeros((3, 2)), "gready")


def ilmvp_multi_greedy(cost: np.ndarray, k: int) -> np.ndarray:
    """ILM-VP's loop with ``mlm_num = k``: a column is dropped once it holds k pairs."""
    score = (cost.max() - cost).astype(np.float64)
    n_target = cost.shape[1]
    picked: list[list[int]] = [[] for _ in range(n_target)]
    for _ in range(n_target * k):
        row, col = divmod(int(score.argmax()), n_target)
        picked[col].append(row)
        score[row, :] = -1
        if len(picked[col]) == k:
            score[:, col] = -1
    return np.array(picked)


@pytest.mark.parametrize("seed", range(4))
def test_multi_source_greedy_equals_the_ilmvp_mlm_loop(seed):
    cost = np.random.default_rng(300 + seed).integers(0, 4, size=(20, 4)).astype(float)  # many ties
    np.testing.assert_array_equal(solve(cost, "greedy", per_target=3), ilmvp_multi_greedy(cost, 3))


@pytest.mark.parametrize("solver", ["emd", "partial"])
def test_multi_source_pot_solvers_reach_the_lsa_cost(solver):
    cost = np.random.default_rng(7).random((30, 5))
    reference = solve(cost, "lsa", per_target=3)
    mapping = solve(cost, solver, per_target=3)
    assert mapping.shape == (5, 3) and len(set(mapping.ravel().tolist())) == 15
    assert mapping_cost(cost, mapping) == pytest.approx(mapping_cost(cost, reference), abs=1e-9)
