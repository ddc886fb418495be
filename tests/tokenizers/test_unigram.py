"""Unigram likelihood, Viterbi and removal losses against brute-force enumeration (seed 000 eq. 5.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import digamma

from madapt.tokenizers.unigram import (
    CONTROL,
    NORMAL,
    UNKNOWN,
    UnigramModel,
    WordCorpus,
    corpus_loglik,
    corpus_loglik_without,
    exact_removal_loss,
    viterbi,
    word_counts,
    word_logliks,
)
from madapt.tokenizers.unigram_round import (
    expected_counts,
    reestimate_scores,
    removal_loss,
    round_stats,
    viterbi_counts,
    word_chunks,
)

PIECES = [
    "<unk>",
    "<s>",
    "▁",
    "a",
    "b",
    "c",
    "ab",
    "bc",
    "ca",
    "abc",
    "▁a",
    "▁ab",
    "▁c",
    "bca",
    "cab",
    "▁abc",
]
SENTENCES = ["abc ab abca bcab c cab", "ab abc abcabc ca bca", "cabca abab bcbc a", "abc abc ab b"]


def tiny_model(seed: int = 0) -> UnigramModel:
    rng = np.random.default_rng(seed)
    scores = np.log(rng.dirichlet(np.ones(len(PIECES))))
    scores[:2] = 0.0
    return UnigramModel(PIECES, scores, [UNKNOWN, CONTROL] + [NORMAL] * (len(PIECES) - 2))


def vocab_of(model: UnigramModel) -> dict[str, float]:
    return {p: s for p, s, m in zip(model.pieces, model.scores, model.matchable) if m}


def segmentations(word: str, vocab: dict[str, float]) -> list[tuple[list[str], float]]:
    """Every segmentation with its log-prob; sentencepiece's unknown rule for uncovered characters."""
    unk_score = min(vocab.values()) - 10.0
    out: list[tuple[list[str], float]] = []

    def walk(i: int, pieces: list[str], score: float) -> None:
        if i == len(word):
            out.append((pieces, score))
            return
        for j in range(i + 1, len(word) + 1):
            if word[i:j] in vocab:
                walk(j, pieces + [word[i:j]], score + vocab[word[i:j]])
        if word[i] not in vocab:
            walk(i + 1, pieces + [word[i]], score + unk_score)

    walk(0, [], 0.0)
    return out


def brute_loglik(word: str, vocab: dict[str, float]) -> float:
    return float(np.logaddexp.reduce([s for _, s in segmentations(word, vocab)]))


def brute_viterbi(word: str, vocab: dict[str, float]) -> list[str]:
    return max(segmentations(word, vocab), key=lambda ps: ps[1])[0]


def test_word_counts_split_before_each_space_only() -> None:
    # sentencepiece's SplitIntoWords: a cut before every "▁"; tabs stay inside their word, a
    # second space is a word of its own, and without a dummy prefix the first word has no "▁".
    corpus = word_counts(["ab  ab\tc", "c ab", "ab"])
    assert corpus.words == ["ab", "c", "▁", "▁ab", "▁ab\tc"]
    assert corpus.counts.tolist() == [2.0, 1.0, 1.0, 1.0, 1.0]
    lines = word_counts(["a b\n\nc d"], mode="lines")
    assert lines.words == ["a▁b\n\n", "c▁d"]


def test_chunked_statistics_equal_one_chunk() -> None:
    model, corpus = tiny_model(1), word_counts(SENTENCES * 2 + ["abcabcabcabc cab"])
    chunks = list(word_chunks(corpus, chunk_chars=7))
    assert len(chunks) > 3 and sum(len(w) for w, _ in chunks) == len(corpus.words)
    whole, parts = round_stats(model, corpus, chunk_chars=10**9), round_stats(model, corpus, chunk_chars=7)
    np.testing.assert_array_equal(whole.loss, parts.loss)
    np.testing.assert_allclose(whole.freq, viterbi_counts(model, corpus, chunk_chars=5))
    e1, z1 = expected_counts(model, corpus, chunk_chars=10**9)
    e2, z2 = expected_counts(model, corpus, chunk_chars=6)
    np.testing.assert_allclose(e1, e2, rtol=1e-12)
    assert z1 == pytest.approx(z2, rel=1e-12)
    cached = reestimate_scores(model, corpus, 3, chunk_chars=6)
    rebuilt = reestimate_scores(model, corpus, 3, chunk_chars=6, cache_bytes=0)
    np.testing.assert_array_equal(cached.scores, rebuilt.scores)


def test_corpus_loglik_is_sum_over_all_segmentations() -> None:
    model, corpus = tiny_model(), word_counts(SENTENCES)
    vocab = vocab_of(model)
    expected = sum(c * brute_loglik(w, vocab) for w, c in zip(corpus.words, corpus.counts))
    assert corpus_loglik(model, corpus) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abc▁", min_size=1, max_size=8), st.integers(0, 5))
def test_viterbi_and_loglik_match_enumeration(word: str, seed: int) -> None:
    model = tiny_model(seed)
    vocab = vocab_of(model)
    assert viterbi(model, [word]) == [brute_viterbi(word, vocab)]
    assert word_logliks(model, [word])[0] == pytest.approx(brute_loglik(word, vocab), rel=1e-12)


def test_unknown_characters_use_min_score_minus_ten() -> None:
    model = tiny_model()
    vocab = vocab_of(model)
    for word in ["▁xa", "▁a😀b", "▁\x00c"]:
        assert viterbi(model, [word])[0] == brute_viterbi(word, vocab)
        assert word_logliks(model, [word])[0] == pytest.approx(brute_loglik(word, vocab), rel=1e-12)
    assert word_logliks(model, ["z"])[0] == pytest.approx(min(vocab.values()) - 10.0)


@pytest.mark.parametrize("renormalize", [True, False])
def test_exact_removal_loss_equals_brute_force_recomputation(renormalize: bool) -> None:
    model, corpus = tiny_model(1), word_counts(SENTENCES)
    vocab = vocab_of(model)
    z = sum(math.exp(s) for s in vocab.values())
    base = sum(c * brute_loglik(w, vocab) for w, c in zip(corpus.words, corpus.counts))
    loss = exact_removal_loss(model, corpus, renormalize=renormalize)
    for i, piece in enumerate(model.pieces):
        if piece not in vocab:
            assert loss[i] == np.inf
            continue
        shift = math.log(z / (z - math.exp(vocab[piece]))) if renormalize else 0.0
        reduced = {p: s + shift for p, s in vocab.items() if p != piece}
        without = sum(c * brute_loglik(w, reduced) for w, c in zip(corpus.words, corpus.counts))
        assert corpus_loglik_without(model, corpus, piece, renormalize) == pytest.approx(without, rel=1e-12)
        assert loss[i] == pytest.approx(base - without, rel=1e-9, abs=1e-9)


def reference_sentencepiece_losses(model: UnigramModel, corpus: WordCorpus) -> np.ndarray:
    """Plain transcription of sentencepiece's PruneSentencePieces with enumerated Viterbi paths."""
    vocab = vocab_of(model)
    index = {p: i for i, p in enumerate(model.pieces)}
    freq = np.zeros(len(model.pieces))
    for word, count in zip(corpus.words, corpus.counts):
        for piece in brute_viterbi(word, vocab):
            freq[index[piece]] += count
    total = freq.sum()
    loss = np.full(len(model.pieces), np.inf)
    for piece in vocab:
        i = index[piece]
        ranked = sorted(segmentations(piece, vocab), key=lambda ps: -ps[1])
        if len(ranked) == 1:
            loss[i] = np.inf if freq[i] > 0 else 0.0  # no alternative: always kept
            continue
        if len(ranked[0][0]) >= 2 or freq[i] == 0:
            loss[i] = 0.0  # never on a Viterbi path: removable for free
            continue
        alternative = ranked[1][0]
        logsum_alt = math.log(total + freq[i] * (len(alternative) - 1))
        logprob_alt = sum(math.log(freq[index[a]] + freq[i]) - logsum_alt for a in alternative)
        loss[i] = freq[i] / total * (math.log(freq[i]) - math.log(total) - logprob_alt)
    return loss


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_removal_loss_equals_sentencepiece_reference_loop(seed: int) -> None:
    model, corpus = tiny_model(seed), word_counts(SENTENCES)
    expected = reference_sentencepiece_losses(model, corpus)
    got = removal_loss(model, corpus)
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-10, atol=1e-12)
    assert (got[finite] != 0).sum() >= 3  # the example exercises real alternatives


def test_removal_loss_ranks_like_exact_loss_on_a_consistent_model() -> None:
    # Scores set to Viterbi frequencies (what sentencepiece's approximation assumes): the least
    # useful pieces by the approximation must also be the least useful by the exact loss.
    corpus = word_counts(SENTENCES * 3 + ["abcab bcabc cabca"])
    model = tiny_model(0)
    for _ in range(3):
        model = reestimate_scores(model, corpus)
    approx, exact = removal_loss(model, corpus), exact_removal_loss(model, corpus)
    scored = np.flatnonzero(np.isfinite(approx) & (approx != 0))
    rho = np.corrcoef(np.argsort(np.argsort(approx[scored])), np.argsort(np.argsort(exact[scored])))[0, 1]
    assert len(scored) >= 5 and rho > 0.5


def test_expected_counts_are_posterior_averages() -> None:
    model, corpus = tiny_model(2), word_counts(SENTENCES)
    vocab = vocab_of(model)
    expected = np.zeros(len(model.pieces))
    for word, count in zip(corpus.words, corpus.counts):
        segs = segmentations(word, vocab)
        z = np.logaddexp.reduce([s for _, s in segs])
        for pieces, score in segs:
            for p in pieces:
                expected[model.pieces.index(p)] += count * math.exp(score - z)
    counts, loglik = expected_counts(model, corpus)
    np.testing.assert_allclose(counts, expected, rtol=1e-10, atol=1e-12)
    assert loglik == pytest.approx(corpus_loglik(model, corpus))


def test_reestimate_scores_is_sentencepiece_m_step() -> None:
    model, corpus = tiny_model(3), word_counts(SENTENCES)
    counts, _ = expected_counts(model, corpus)
    new = reestimate_scores(model, corpus, n_iter=1)
    c = np.maximum(counts[model.matchable], 0.5)
    np.testing.assert_allclose(new.scores[model.matchable], digamma(c) - digamma(c.sum()))
    assert np.array_equal(new.scores[~model.matchable], model.scores[~model.matchable])
    assert np.all(np.isfinite(new.scores))


def test_required_mask_covers_specials_and_single_characters() -> None:
    model = tiny_model()
    required = {p for p, r in zip(model.pieces, model.required_mask()) if r}
    assert required == {"<unk>", "<s>", "▁", "a", "b", "c"}


def test_model_needs_exactly_one_unknown_piece() -> None:
    with pytest.raises(ValueError, match="UNKNOWN"):
        UnigramModel(["a", "b"], [-1.0, -1.0], [NORMAL, NORMAL])
