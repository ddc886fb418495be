"""LM evidence for every piece a pruning decision uses (seed 000 eq. 5.3, §5.4.6.1).

Eq. 5.3 sums a piece's cross-entropy over its occurrences in the scoring slice. A piece that
never occurs there has no LM evidence: literally b = 0, so the ratio a / log(b + 1) is +inf and
the piece can never be pruned; imputing b from other pieces' mean loss decides it by luck
(§5.4.6.1: with small inference corpora "a significant number of tokens are absent, resulting in
numerous instances where loss values cannot be computed"). At micro scale about 40 % of an
8k vocabulary is absent from the slice. Here such a piece gets real evidence or none:

1. **Evidence text** (`find_evidence`). Documents the round's LM has not trained on (the training
   text after the round's cursor, up to where the round started, never wrapping into what it
   read) are Viterbi-encoded with the round's vocabulary and taken, in order, when they hold a
   piece still lacking evidence, up to a token budget. The LM scores them like the slice.
2. **b from that evidence** (`lm_term`). For a piece absent from the slice but seen in the
   evidence text, b = (expected occurrences in the slice) x (its mean CE on the evidence text),
   the expected occurrences being its share of the corpus's Viterbi counts times the slice's
   tokens: the slice's sum of eq. 5.3 in expectation, from the piece's own LM loss. Pieces that
   occur in the slice keep the literal sum.
3. **No evidence, no LM decision** (`prune_by_evidence`). Pieces with neither are kept out of the
   ADAT ranking: they are pruned at the round's overall rate (the same fraction of them as of the
   removable pieces), lowest Unigram removal loss a first, which is the Unigram baseline's own
   criterion. Pieces never on a Viterbi path (a = 0, which the final tokenizer never emits) fall
   there and go first, as in sentencepiece. The rest is ranked by the ADAT score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from madapt.tokenizers.scoring import LossAccumulator, prune


@dataclass(frozen=True)
class EvidenceSearch:
    """How much evidence text a round may score: ``pass_docs`` training documents in one pass of
    the corpus, at most ``token_fraction`` times the scoring slice's tokens, for the pieces
    marked ``wanted`` (removable, matchable, on some Viterbi path of the corpus)."""

    pass_docs: int
    token_fraction: float
    wanted: np.ndarray


def find_evidence(
    missing: np.ndarray,
    encode: Callable[[list[str]], list[list[int]]],
    docs: Iterable[str],
    max_tokens: int,
    chunk: int = 512,
) -> list[str]:
    """Documents of ``docs`` (the unseen training text, in order) that hold pieces of ``missing``
    (bool per piece), each taken when it adds at least one still-missing piece, until none is
    missing, ``docs`` runs out or ``max_tokens`` Viterbi tokens are taken."""
    still = missing.copy()
    taken: list[str] = []
    tokens = 0
    source = iter(docs)
    while still.any() and tokens < max_tokens:
        batch = list(islice(source, chunk))
        if not batch:
            break
        for doc, ids in zip(batch, encode(batch)):
            ids = np.asarray(ids, dtype=np.int64)
            if still[ids].any():
                still[ids] = False
                taken.append(doc)
                tokens += len(ids) + 1
                if tokens >= max_tokens or not still.any():
                    break
    return taken


@dataclass(frozen=True)
class LMTerm:
    """b of eq. 5.3 per piece and where it came from."""

    b: np.ndarray
    in_slice: np.ndarray  # occurs in the scoring slice: b is the literal sum
    from_evidence: np.ndarray  # absent from the slice, b estimated from the evidence text

    @property
    def has_evidence(self) -> np.ndarray:
        return self.in_slice | self.from_evidence


def lm_term(
    slice_acc: LossAccumulator, evidence_acc: LossAccumulator | None, freq: np.ndarray, matchable: np.ndarray
) -> LMTerm:
    """b per piece (module docstring, step 2); pieces without evidence get b = 0 and are flagged."""
    total, count = slice_acc.total.numpy(), slice_acc.count.numpy()
    in_slice = count > 0
    b = np.where(in_slice, total, 0.0)
    from_evidence = np.zeros(len(b), dtype=bool)
    if evidence_acc is not None and freq.sum() > 0:
        e_total, e_count = evidence_acc.total.numpy(), evidence_acc.count.numpy()
        from_evidence = ~in_slice & (e_count > 0) & matchable
        slice_tokens = count[matchable].sum()
        expected = freq / freq.sum() * slice_tokens
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_ce = np.where(e_count > 0, e_total / np.maximum(e_count, 1), 0.0)
        b = np.where(from_evidence, expected * mean_ce, b)
    return LMTerm(b, in_slice, from_evidence)


def prune_by_evidence(
    pieces: Sequence[str],
    score: np.ndarray,
    a: np.ndarray,
    n_remove: int,
    required: np.ndarray,
    has_evidence: np.ndarray,
) -> np.ndarray:
    """Keep-mask removing ``n_remove`` pieces (module docstring, step 3): the pieces without
    evidence at the overall rate by ``a`` alone, the others by ``score``."""
    removable = ~np.asarray(required, dtype=bool)
    blind = removable & ~has_evidence
    n_blind = round(n_remove * int(blind.sum()) / max(int(removable.sum()), 1))
    n_blind = min(n_blind, int(blind.sum()), n_remove)
    n_seen = n_remove - n_blind
    if n_seen > int((removable & has_evidence).sum()):  # too few with evidence: the rest from blind
        n_seen = int((removable & has_evidence).sum())
        n_blind = n_remove - n_seen
    keep_blind = prune(pieces, np.where(blind, a, np.inf), n_blind, ~blind)
    keep_seen = prune(pieces, np.where(blind, np.inf, score), n_seen, ~(removable & has_evidence))
    return keep_blind & keep_seen
