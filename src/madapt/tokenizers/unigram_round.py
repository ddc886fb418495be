"""One Unigram pruning round's statistics, streamed over the word corpus in chunks (seed 000 §5.3.1).

A round needs, on the current vocabulary, every piece's Viterbi count and its removal loss
(eq. 5.2 as sentencepiece's ``PruneSentencePieces`` approximates it) and, on the pruned one, EM
re-estimation of the scores. All of it is computed chunk by chunk: the unique words are cut into
groups of at most ``chunk_chars`` characters, each group gets its own `lattice.Lattice`, and only
per-piece sums cross chunks. Memory is therefore set by ``chunk_chars`` (about 60 bytes per
character while a lattice is built, 25 per character held), not by the corpus.

* `round_stats`: one Viterbi pass over the corpus gives the counts, which the removal loss and
  the ADAT round (expected occurrences of a piece in the scoring slice) both use; the
  second-best split of every piece comes from a lattice over the pieces' own strings.
* `reestimate_scores`: the E-step (forward-backward marginals) per chunk, summed, then
  sentencepiece's Bayesian M-step. The pruned vocabulary's lattices are built once and reused
  by every EM iteration while they fit in ``cache_bytes``; beyond that they are rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.special import digamma

from madapt.tokenizers.lattice import Lattice, _PieceTable
from madapt.tokenizers.unigram import UnigramModel, WordCorpus

CHUNK_CHARS = 1_000_000
CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class RoundStats:
    """Per piece: removal loss (eq. 5.2, larger = more useful) and Viterbi count over the corpus."""

    loss: np.ndarray
    freq: np.ndarray


def word_chunks(corpus: WordCorpus, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[list[str], np.ndarray]]:
    """The corpus's words and counts in consecutive groups of at most ``chunk_chars`` characters
    (a longer word is a group of its own)."""
    lengths = np.fromiter((len(w) for w in corpus.words), dtype=np.int64, count=len(corpus.words))
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(corpus.words):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + chunk_chars, side="right")))
        yield corpus.words[lo:hi], corpus.counts[lo:hi]
        lo = hi


def viterbi_counts(
    model: UnigramModel, corpus: WordCorpus, chunk_chars: int = CHUNK_CHARS, table: _PieceTable | None = None
) -> np.ndarray:
    """How often each piece is on the Viterbi path of the corpus (unknown characters count as unk)."""
    table = _PieceTable(model) if table is None else table
    freq = np.zeros(len(model.pieces))
    for words, counts in word_chunks(corpus, chunk_chars):
        lattice = Lattice(model, words, table)
        _, best = lattice.forward(lattice.edge_scores(model), viterbi=True)
        owner, edge = lattice.backtrack(best, np.arange(len(words)))
        freq += np.bincount(lattice.piece[edge], weights=counts[owner], minlength=len(freq))
    return freq


def _alternatives(
    model: UnigramModel, table: _PieceTable, chunk_chars: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every matchable piece whose own string's Viterbi path is the piece itself: the pieces
    of its best split without it (2nd-best path). Returns the mask of such pieces and the
    (piece, alternative piece) pairs."""
    matchable = np.flatnonzero(model.matchable)
    own_best = np.zeros(len(model.pieces), dtype=bool)
    owners, alts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    strings = WordCorpus([model.pieces[i] for i in matchable], matchable.astype(float))
    for words, ids in word_chunks(strings, chunk_chars):
        ids = ids.astype(np.int64)
        lattice = Lattice(model, words, table)
        scores = lattice.edge_scores(model)
        _, best = lattice.forward(scores, viterbi=True)
        # A piece is its own Viterbi path iff the best edge into its string's end spans it whole.
        last = best[lattice.final_nodes()]
        is_own = (lattice.piece[last] == ids) & (lattice.start[last] == 0)
        own_best[ids[is_own]] = True
        self_edge = lattice.piece == ids[lattice.string]
        _, best_alt = lattice.forward(np.where(self_edge, -np.inf, scores), viterbi=True)
        owner, edge = lattice.backtrack(best_alt, np.flatnonzero(is_own))
        owners.append(ids[owner]), alts.append(lattice.piece[edge].astype(np.int64))
    return own_best, np.concatenate(owners), np.concatenate(alts)


def round_stats(model: UnigramModel, corpus: WordCorpus, chunk_chars: int = CHUNK_CHARS) -> RoundStats:
    """Viterbi counts and removal loss in one pass over the corpus (see `removal_loss`)."""
    table = _PieceTable(model)
    freq = viterbi_counts(model, corpus, chunk_chars, table)
    own_best, owner_piece, alt_pid = _alternatives(model, table, chunk_chars)
    n_pieces = len(model.pieces)
    n_alt = np.bincount(owner_piece, minlength=n_pieces)
    total, new_total = freq.sum(), freq.sum() + freq * (n_alt - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        alt_terms = np.log(freq[alt_pid] + freq[owner_piece]) - np.log(new_total[owner_piece])
        alt_logprob = np.bincount(owner_piece, weights=alt_terms, minlength=n_pieces)
        loss = (freq / total) * (np.log(freq / total) - alt_logprob)
    kept = own_best & (freq > 0)
    result = np.where(kept, np.where(n_alt > 0, loss, np.inf), 0.0)
    return RoundStats(np.where(model.matchable, result, np.inf), freq)


def removal_loss(model: UnigramModel, corpus: WordCorpus, chunk_chars: int = CHUNK_CHARS) -> np.ndarray:
    """Per-piece removal loss (eq. 5.2) with sentencepiece's ``PruneSentencePieces`` approximation.

    NOT the exact likelihood difference (see `unigram.exact_removal_loss`). As sentencepiece's
    unigram_model_trainer.cc: freq_i = Viterbi count of piece i over the corpus;
    every occurrence of i is assumed re-segmented into its best split without i (the 2nd-best
    Viterbi path of the piece's own string); alternatives' counts grow by freq_i and the total
    by freq_i x (|alt| - 1), and

        loss_i = (freq_i / sum freq) x (log(freq_i / sum) - sum_alt log((freq_a + freq_i) / sum')).

    Larger = more useful. Conventions: pieces whose own string is better split, or that are never
    on a Viterbi path, get 0 (sentencepiece drops them first); pieces with no alternative and
    non-matchable pieces get +inf (sentencepiece always keeps them). The loss can be negative.
    Computed in float64 (sentencepiece uses float32).
    """
    return round_stats(model, corpus, chunk_chars).loss


def _e_step(
    lattice: Lattice, scores: np.ndarray, counts: np.ndarray, n_pieces: int
) -> tuple[np.ndarray, float]:
    alpha, beta = lattice.forward(scores)[0], lattice.backward(scores)
    z = alpha[lattice.final_nodes()]
    posterior = np.exp(alpha[lattice.src] + scores + beta[lattice.dst] - z[lattice.string])
    expected = np.bincount(lattice.piece, weights=posterior * counts[lattice.string], minlength=n_pieces)
    return expected, float(counts @ z)


def expected_counts(
    model: UnigramModel, corpus: WordCorpus, chunk_chars: int = CHUNK_CHARS
) -> tuple[np.ndarray, float]:
    """E-step: expected piece counts (forward-backward marginals) and the corpus log-likelihood."""
    table = _PieceTable(model)
    total, loglik = np.zeros(len(model.pieces)), 0.0
    for words, counts in word_chunks(corpus, chunk_chars):
        lattice = Lattice(model, words, table)
        expected, z = _e_step(lattice, lattice.edge_scores(model), counts, len(model.pieces))
        total += expected
        loglik += z
    return total, loglik


def reestimate_scores(
    model: UnigramModel,
    corpus: WordCorpus,
    n_iter: int = 2,
    chunk_chars: int = CHUNK_CHARS,
    cache_bytes: int = CACHE_BYTES,
) -> UnigramModel:
    """EM re-estimation of matchable pieces' scores after pruning: sentencepiece's Bayesian M-step
    digamma(c_i) - digamma(sum c), with counts floored at 0.5 (where sentencepiece would drop the
    piece) so that required pieces stay, with the lowest scores. Chunk lattices are kept for the
    next iteration while their arrays fit in ``cache_bytes``."""
    current = UnigramModel(list(model.pieces), model.scores.copy(), model.types.copy())
    mask = current.matchable
    if n_iter == 0:
        return current
    table = _PieceTable(current)
    cache: dict[int, Lattice] = {}
    held = 0
    for _ in range(n_iter):
        total = np.zeros(len(current.pieces))
        for k, (words, counts) in enumerate(word_chunks(corpus, chunk_chars)):
            lattice = cache.get(k) or Lattice(current, words, table)
            total += _e_step(lattice, lattice.edge_scores(current), counts, len(current.pieces))[0]
            if k not in cache and n_iter > 1 and held + lattice.nbytes <= cache_bytes:
                cache[k] = lattice
                held += lattice.nbytes
        c = np.maximum(total[mask], 0.5)
        current.scores[mask] = digamma(c) - digamma(c.sum())
    return current
