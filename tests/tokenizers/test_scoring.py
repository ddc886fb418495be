"""LM-loss accumulation (eq. 5.3), momentum (eq. 5.5), balance functions (Table 5.5) and pruning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from madapt.errors import ConfigError
from madapt.tokenizers.scoring import LossAccumulator, adat_score, carry_over, momentum, prune


def test_accumulator_equals_per_occurrence_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    vocab, batches = 11, []
    acc = LossAccumulator(vocab)
    for _ in range(3):
        ce = torch.rand(4, 9, generator=gen) * 5
        targets = torch.randint(0, vocab, (4, 9), generator=gen)
        lengths = torch.randint(1, 10, (4,), generator=gen)
        mask = torch.arange(9)[None, :] < lengths[:, None]
        acc.update(ce, targets, mask)
        batches.append((ce, targets, mask))
    total, count = [0.0] * vocab, [0] * vocab
    for ce, targets, mask in batches:
        for b in range(4):
            for t in range(9):
                if mask[b, t]:
                    total[targets[b, t]] += float(ce[b, t])
                    count[targets[b, t]] += 1
    np.testing.assert_allclose(acc.total.numpy(), total, rtol=1e-6)
    assert acc.count.tolist() == count
    seen = np.array(count) > 0
    means = np.array(total) / np.maximum(count, 1)
    np.testing.assert_allclose(acc.mean().numpy()[seen], means[seen], rtol=1e-6)
    assert torch.isnan(acc.mean()[~torch.from_numpy(seen)]).all()


def test_update_from_logits_scores_next_tokens_and_skips_padding() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=gen)
    ids = torch.randint(0, 7, (2, 5), generator=gen)
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    acc = LossAccumulator(7)
    acc.update_from_logits(logits, ids, attention)
    total = torch.zeros(7, dtype=torch.float64)
    for b in range(2):
        for t in range(4):
            if attention[b, t + 1]:
                target = ids[b, t + 1]
                total[target] += float(-torch.log_softmax(logits[b, t], -1)[target])
    torch.testing.assert_close(acc.total, total)
    assert int(acc.count.sum()) == 4 + 2


def test_momentum_follows_eq_5_5_without_one_minus_beta() -> None:
    first = momentum(None, np.array([1.0, 2.0]), beta=0.9)
    assert first.tolist() == [1.0, 2.0]
    second = momentum(first, np.array([3.0, 0.5]), beta=0.9)
    np.testing.assert_allclose(second, [0.9 * 1.0 + 3.0, 0.9 * 2.0 + 0.5])
    np.testing.assert_allclose(momentum(second, np.zeros(2), beta=0.0), 0.0)


def test_carry_over_aligns_by_piece_after_pruning() -> None:
    prev = {"▁the": 5.0, "ab": 1.5, "zz": 9.0}
    assert carry_over(prev, ["ab", "▁the", "new"]).tolist() == [1.5, 5.0, 0.0]


def test_balance_functions_match_table_5_5() -> None:
    a, b = np.array([2.0, 0.5, 4.0]), np.array([3.0, 10.0, 0.25])
    np.testing.assert_allclose(adat_score(a, b, "ratio", lam=2.0), a / (2.0 * np.log(b + 1)))
    np.testing.assert_allclose(adat_score(a, b, "diff", lam=0.5), a - 0.5 * b)
    np.testing.assert_allclose(adat_score(a, b, "logdiff"), np.log(a) - b)
    assert adat_score(np.array([2.0]), np.array([math.e - 1]), "ratio")[0] == pytest.approx(2.0)


def test_score_rewards_frequency_and_penalises_lm_loss() -> None:
    a = np.array([1.0, 2.0, 1.0])
    b = np.array([5.0, 5.0, 20.0])
    for balance in ("ratio", "diff", "logdiff"):
        s = adat_score(a, b, balance)
        assert s[1] > s[0] > s[2], balance


def test_ratio_and_logdiff_edge_conventions() -> None:
    s = adat_score(np.array([1.0, 0.0, -1.0]), np.zeros(3), "ratio")
    assert s.tolist() == [np.inf, 0.0, -np.inf]
    assert adat_score(np.array([0.0, -2.0]), np.array([1.0, 1.0]), "logdiff").tolist() == [-np.inf, -np.inf]


def test_unknown_balance_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ratio, diff, logdiff"):
        adat_score(np.ones(2), np.ones(2), "product")  # type: ignore[arg-type]


def test_prune_removes_lowest_non_required_to_exact_size() -> None:
    pieces = ["<unk>", "a", "b", "ab", "ba", "abc", "bca", "c"]
    scores = np.array([-9.0, -5.0, -4.0, 3.0, 1.0, 0.5, 2.0, -7.0])
    required = np.array([len(p) == 1 or p.startswith("<") for p in pieces])
    keep = prune(pieces, scores, 2, required)
    assert keep.sum() == len(pieces) - 2
    assert [p for p, k in zip(pieces, keep) if not k] == ["ba", "abc"]
    assert keep[required].all()


def test_prune_ties_remove_the_later_id_and_limits_are_checked() -> None:
    pieces = ["<unk>", "xa", "xb", "xc"]
    required = np.array([True, False, False, False])
    keep = prune(pieces, np.array([0.0, 1.0, 1.0, 1.0]), 1, required)
    assert keep.tolist() == [True, True, True, False]
    with pytest.raises(ConfigError, match="at most 3"):
        prune(pieces, np.zeros(4), 4, required)
    with pytest.raises(ValueError, match="NaN"):
        prune(pieces, np.array([0.0, np.nan, 1.0, 1.0]), 1, required)
