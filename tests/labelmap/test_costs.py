"""Cost matrices of seed 000 §6.4.2 (eq. 6.10) and §6.4.4, and their streaming accumulation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from madapt.errors import DataError
from madapt.labelmap.costs import (
    CostAccumulator,
    accumulate,
    frequency_cost_from_counts,
    frequency_matrix,
    ot_cost,
    ot_cost_from_sums,
)


def random_probs(n: int, n_source: int, n_target: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, n_source, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, n_target, (n,), generator=g)
    return probs.to(dtype), labels


def naive_ot_cost(probs: np.ndarray, labels: np.ndarray, n_target: int) -> np.ndarray:
    """Eq. 6.10 with explicit loops: C_ij = 1 - sum_{k in class j} f_ki / sum_n f_ni."""
    n, n_source = probs.shape
    cost = np.zeros((n_source, n_target))
    for i in range(n_source):
        total = sum(probs[k, i] for k in range(n))
        for j in range(n_target):
            in_class = sum(probs[k, i] for k in range(n) if labels[k] == j)
            cost[i, j] = 1.0 - in_class / total
    return cost


def test_hand_worked_cost_normalises_each_source_class_over_all_samples():
    # Three samples, two source classes, two target classes (labels 0, 0, 1).
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # Source 0 has total mass 1.7: 1.5 of it on class 0, 0.2 on class 1.
    # Source 1 has total mass 1.3: 0.5 on class 0, 0.8 on class 1.
    expected = np.array([[1 - 1.5 / 1.7, 1 - 0.2 / 1.7], [1 - 0.5 / 1.3, 1 - 0.8 / 1.3]])
    np.testing.assert_allclose(ot_cost(probs, labels, n_target=2), expected, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ot_cost_matches_naive_loops(seed):
    probs, labels = random_probs(40, 7, 4, seed)
    got = ot_cost(probs, labels, n_target=4, batch_size=9)
    assert got.shape == (7, 4)
    np.testing.assert_allclose(got, naive_ot_cost(probs.numpy(), labels.numpy(), 4), rtol=1e-12, atol=1e-12)
    # Each source row spends exactly its total mass over the targets: sum_j (1 - C_ij) = 1.
    np.testing.assert_allclose((1 - got).sum(axis=1), np.ones(7), rtol=1e-12)


def test_float32_inputs_match_float64_formula():
    probs, labels = random_probs(300, 11, 5, seed=3)
    got = ot_cost(probs.float(), labels, n_target=5, batch_size=32)
    np.testing.assert_allclose(got, naive_ot_cost(probs.numpy(), labels.numpy(), 5), atol=1e-6)


def test_frequency_matrix_counts_argmax_per_target_class():
    probs, labels = random_probs(60, 6, 3, seed=4)
    expected = np.zeros((6, 3), dtype=np.int64)
    for row, label in zip(probs.numpy(), labels.numpy()):
        expected[row.argmax(), label] += 1
    counts = frequency_matrix(probs, labels, n_target=3, batch_size=13)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == 60
    np.testing.assert_array_equal(frequency_cost_from_counts(counts), expected.max() - expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streaming_in_uneven_batches_equals_in_memory(dtype):
    probs, labels = random_probs(257, 9, 4, seed=5, dtype=dtype)
    reference = accumulate(probs, labels, 4, batch_size=len(labels)).stats()
    # flush_rows=10 forces many float32 -> float64 flushes along the way.
    acc = CostAccumulator(9, 4, flush_rows=10)
    bounds = [0, 1, 8, 9, 50, 51, 200, 257]
    for start, stop in itertools.pairwise(bounds):
        acc.update(probs[start:stop], labels[start:stop])
    streamed = acc.stats()
    assert streamed.n_samples == reference.n_samples == 257
    np.testing.assert_array_equal(streamed.counts, reference.counts)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(streamed.prob_sums, reference.prob_sums, rtol=tol)
    np.testing.assert_allclose(
        ot_cost_from_sums(streamed.prob_sums),
        naive_ot_cost(probs.double().numpy(), labels.numpy(), 4),
        atol=10 * tol,
    )


def test_reset_forgets_previous_batches():
    probs, labels = random_probs(30, 5, 3, seed=6)
    acc = CostAccumulator(5, 3)
    acc.update(probs[:10], labels[:10])
    acc.reset()
    acc.update(probs[10:], labels[10:])
    fresh = accumulate(probs[10:], labels[10:], 3).stats()
    np.testing.assert_allclose(acc.stats().prob_sums, fresh.prob_sums, rtol=1e-12)
    assert acc.stats().n_samples == 20


def test_stats_are_a_snapshot_not_a_live_view():
    probs, labels = random_probs(20, 4, 2, seed=7)
    acc = CostAccumulator(4, 2)
    acc.update(probs[:10], labels[:10])
    before = acc.stats()
    saved = before.prob_sums.copy()
    acc.update(probs[10:], labels[10:])
    np.testing.assert_array_equal(before.prob_sums, saved)


def test_zero_mass_source_class_gets_cost_one():
    sums = np.array([[2.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(ot_cost_from_sums(sums), [[1 - 2 / 3, 1 - 1 / 3], [1.0, 1.0]])


def test_class_absent_from_the_data_gets_cost_one():
    probs, labels = random_probs(30, 5, 2, seed=8)  # labels only 0 and 1
    cost = ot_cost(probs, labels, n_target=3)
    np.testing.assert_allclose(cost[:, 2], np.ones(5))


@pytest.mark.parametrize(
    ("probs", "labels", "fragment"),
    [
        (torch.randn(4, 5), torch.tensor([0, 1, 0, 1]), "softmax"),  # logits, not probabilities
        (torch.full((4, 5), 0.2), torch.tensor([0, 1, 2, 3]), "[0, 2]"),  # label 3 with n_target 3
        (torch.full((4, 5), 0.2), torch.tensor([0, -1, 0, 1]), "[-1, 1]"),
        (torch.full((4, 5), 0.2), torch.tensor([0, 1, 0]), "one target label per row"),
        (torch.full((4, 5), 0.2), torch.tensor([0.0, 1.0, 0.0, 1.0]), "integer"),
        (torch.full((4, 6), 1 / 6), torch.tensor([0, 1, 0, 1]), "(batch, 5)"),
    ],
)
def test_bad_batches_raise_data_error(probs, labels, fragment):
    acc = CostAccumulator(5, 3)
    with pytest.raises(DataError) as info:
        acc.update(probs, labels)
    assert fragment in str(info.value)
    assert acc.n_samples == 0


def test_empty_accumulator_cannot_give_stats():
    with pytest.raises(DataError, match="no samples"):
        CostAccumulator(5, 3).stats()


def test_non_matrix_probs_rejected():
    with pytest.raises(DataError, match="2-D"):
        ot_cost(torch.full((5,), 0.2), torch.tensor([0]), n_target=1)
