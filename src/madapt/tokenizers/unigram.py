"""Unigram language model over a piece vocabulary, vectorised over a word lattice (seed 000 §5.3.1).

The corpus is whitespace-pretokenised as sentencepiece trains: only *unique* "▁word" units are
processed, weighted by their counts. All units are segmented at once on one flat lattice (a node
per character boundary, an edge per vocabulary piece found), so forward, Viterbi and
forward-backward loop over character positions with numpy work per position, not over words.

Lattice rules are sentencepiece's ``PopulateNodes``: only NORMAL and USER_DEFINED pieces match;
a position where no one-character piece starts gets an unknown edge scored ``min_score - 10``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from scipy.special import digamma
from sentencepiece import sentencepiece_model_pb2 as pb

from madapt.errors import WeightsError

# sentencepiece ModelProto.SentencePiece.Type values.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNK_PENALTY = 10.0  # sentencepiece's kUnkPenalty
SPACE = "\u2581"


def read_model_proto(model: str | Path | bytes) -> pb.ModelProto:
    """Parse a sentencepiece ModelProto from a path or bytes; unreadable input is a WeightsError."""
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(model if isinstance(model, bytes) else Path(model).read_bytes())
    except (OSError, DecodeError) as exc:
        where = "model bytes" if isinstance(model, bytes) else str(model)
        raise WeightsError(where, f"unreadable ({exc})", "a sentencepiece .model file") from exc
    return proto


@dataclass
class UnigramModel:
    """Pieces with their log-probability scores and sentencepiece types (ids = list positions)."""

    pieces: list[str]
    scores: np.ndarray
    types: np.ndarray

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.types = np.asarray(self.types, dtype=np.int8)
        if not len(self.pieces) == len(self.scores) == len(self.types):
            raise ValueError("pieces, scores and types must have the same length")
        if (self.types == UNKNOWN).sum() != 1:
            raise ValueError("a Unigram model needs exactly one UNKNOWN piece, as sentencepiece has")

    @classmethod
    def from_sentencepiece(cls, model: str | Path | bytes) -> UnigramModel:
        """Read a trained sentencepiece ``.model`` (path or serialized ModelProto bytes)."""
        pieces = read_model_proto(model).pieces
        return cls([p.piece for p in pieces], [p.score for p in pieces], [p.type for p in pieces])

    @property
    def matchable(self) -> np.ndarray:
        """Pieces that can appear in a segmentation (NORMAL and USER_DEFINED)."""
        return (self.types == NORMAL) | (self.types == USER_DEFINED)

    @property
    def unk_id(self) -> int:  # sentencepiece models have exactly one (checked above)
        return int(np.flatnonzero(self.types == UNKNOWN)[0])

    def required_mask(self) -> np.ndarray:
        """Pieces that must survive pruning: special/byte pieces and every single character."""
        single_char = np.array([len(p) == 1 for p in self.pieces], dtype=bool)
        return ~self.matchable | (self.types == USER_DEFINED) | single_char

    def subset(self, keep: np.ndarray) -> UnigramModel:
        """The model restricted to ``keep`` (boolean mask or index array), order preserved."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return UnigramModel([self.pieces[i] for i in idx], self.scores[idx], self.types[idx])


@dataclass(frozen=True)
class WordCorpus:
    """Unique pretokenised units ("▁word") and how often each occurs."""

    words: list[str]
    counts: np.ndarray


def word_counts(sentences: Iterable[str]) -> WordCorpus:
    """Unique "▁word" units and their counts, as sentencepiece's trainer splits on whitespace
    (defaults ``remove_extra_whitespaces``, ``split_by_whitespace``); the main speed trick."""
    counter: Counter[str] = Counter()
    for sentence in sentences:
        counter.update(sentence.split())
    words = sorted(counter)
    return WordCorpus([SPACE + w for w in words], np.array([counter[w] for w in words], float))


class Lattice:
    """All segmentation edges of a list of strings, laid out for level-by-level dynamic programs.

    Node ``offsets[s] + k`` is the boundary after ``k`` characters of string ``s``. Edges are
    sorted by end position, then string, then start: the forward pass handles one end position
    per step, with the edges into each node adjacent (and the longest piece first on ties).
    """

    def __init__(self, model: UnigramModel, strings: list[str], table: _PieceTable | None = None) -> None:
        lengths = np.array([len(s) for s in strings], dtype=np.int64)
        char_start, codes = np.concatenate([[0], np.cumsum(lengths)]), _code_points(strings)
        table = _PieceTable(model) if table is None else table  # reusable: lattices built in batches
        string_of_char = np.repeat(np.arange(len(strings)), lengths)
        # Grow every substring one character at a time while it is still a prefix of some piece;
        # a piece hit is an edge, stored at [start character, length - 1].
        hits = np.full((len(codes), max(table.max_len, 1)), -1, dtype=np.int32)
        pos = np.arange(len(codes))
        room, running = char_start[1:][string_of_char] - pos, np.zeros(len(codes), dtype=np.uint64)
        for col in range(table.max_len):
            running = running * _BASE + codes[pos + col]
            piece, is_prefix = table.lookup(running)
            hit = piece >= 0
            hits[pos[hit], col] = piece[hit]
            more = is_prefix & (room > col + 1)
            pos, room, running = pos[more], room[more], running[more]
        unknown_at = hits[:, 0] < 0  # sentencepiece's unknown node rule
        hits[unknown_at, 0] = model.unk_id
        gpos, col = np.nonzero(hits >= 0)  # ordered by start character, then length
        pid, unknown, string = hits[gpos, col], (col == 0) & unknown_at[gpos], string_of_char[gpos]
        start = gpos - char_start[string]
        end = start + col + 1
        small = end.astype(np.int16) if end.max(initial=0) < 2**15 else end  # int16: radix sort
        order = np.argsort(small, kind="stable")  # by end position, then string, then start
        self.offsets = np.concatenate([[0], np.cumsum(lengths + 1)])
        self.n_nodes = int(self.offsets[-1])
        self.string, self.start, self.end = string[order], start[order], end[order]
        self.piece, self.unknown = pid[order], unknown[order]
        self.src = self.offsets[self.string] + self.start
        self.dst = self.offsets[self.string] + self.end
        bounds = np.searchsorted(self.end, np.arange(1, lengths.max(initial=0) + 2))
        self._levels = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

    def edge_scores(self, model: UnigramModel) -> np.ndarray:
        """Score of every edge; unknown edges get sentencepiece's ``min_score - 10``."""
        table = model.scores.copy()
        table[model.unk_id] = model.scores[model.matchable].min(initial=0.0) - UNK_PENALTY
        return table[self.piece]

    def final_nodes(self) -> np.ndarray:
        return self.offsets[1:] - 1  # node after the last character of each string

    def forward(self, scores: np.ndarray, viterbi: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Log-sum (or max) over paths into every node, and for Viterbi the best incoming edge."""
        alpha = np.full(self.n_nodes, -np.inf)
        alpha[self.offsets[:-1]] = 0.0
        best = np.full(self.n_nodes, -1, dtype=np.int64)
        for lo, hi in self._levels:
            values = alpha[self.src[lo:hi]] + scores[lo:hi]
            dst = self.dst[lo:hi]
            group = np.flatnonzero(np.diff(dst, prepend=-1))
            top = np.maximum.reduceat(values, group)
            if viterbi:
                is_top = values == np.repeat(top, np.diff(group, append=len(values)))
                first = np.where(is_top, np.arange(len(values)), len(values))
                reached = np.isfinite(top)  # masked-out edges must not become back-pointers
                best[dst[group]] = np.where(reached, lo + np.minimum.reduceat(first, group), -1)
                alpha[dst[group]] = top
            else:
                alpha[dst[group]] = _group_logsumexp(values, group, top)
        return alpha, best

    def backward(self, scores: np.ndarray) -> np.ndarray:
        """Log-sum over paths from every node to its string's end."""
        beta = np.full(self.n_nodes, -np.inf)
        beta[self.final_nodes()] = 0.0
        # By start position descending, then string, so edges leaving one node are adjacent.
        order = np.argsort(-self.start * len(self.offsets) + self.string)
        start = self.start[order]
        bounds = np.flatnonzero(np.diff(start, prepend=-1))
        for lo, hi in zip(bounds, np.append(bounds[1:], len(order))):
            edges = order[lo:hi]
            src = self.src[edges]  # groups of equal src are contiguous (sorted by string)
            values = beta[self.dst[edges]] + scores[edges]
            group = np.flatnonzero(np.diff(src, prepend=-1))
            beta[src[group]] = _group_logsumexp(values, group, np.maximum.reduceat(values, group))
        return beta

    def backtrack(self, best: np.ndarray, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Viterbi paths of ``strings`` as (string, edge) index pairs, last edges first; no path, no pairs."""
        node, owner = self.final_nodes()[strings], np.asarray(strings)
        out_owner, out_edge = [], []
        while node.size:
            edge = best[node]
            alive = edge >= 0
            node, owner, edge = node[alive], owner[alive], edge[alive]
            out_owner.append(owner), out_edge.append(edge)
            node = self.src[edge]
            more = self.start[edge] > 0
            node, owner = node[more], owner[more]
        if not out_edge:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(out_owner), np.concatenate(out_edge)


_BASE = np.uint64(0x100000001B3)  # odd 64-bit multiplier of the polynomial string hash
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, for bucketing


def _code_points(strings: list[str]) -> np.ndarray:
    # +1 so that a NUL character still changes the hash.
    return np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) + 1


class _PieceTable:
    """Matchable pieces and their proper prefixes, looked up by 64-bit polynomial hash.

    A false match needs a 64-bit collision between a text substring and a piece (about 1e-7 for
    150k pieces x 10M substrings); collisions among whole pieces are checked. Hashes are
    bucketed (Fibonacci hashing), so a lookup is one or two array reads, not a binary search.
    """

    def __init__(self, model: UnigramModel) -> None:
        ids = np.flatnonzero(model.matchable)
        lengths = np.array([len(model.pieces[i]) for i in ids], dtype=np.int64)
        codes = _code_points([model.pieces[i] for i in ids])
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.max_len = int(lengths.max(initial=0))
        running = np.zeros(len(ids), dtype=np.uint64)
        keys, values = [], []
        for k in range(self.max_len):
            grow = lengths > k
            running[grow] = running[grow] * _BASE + codes[first[grow] + k]
            keys.append(running[grow])
            values.append(np.where(lengths[grow] == k + 1, ids[grow], -1))  # -1: proper prefix
        key, value = np.concatenate(keys), np.concatenate(values)
        self.keys, inverse = np.unique(key, return_inverse=True)
        if len(np.unique(key[value >= 0])) != len(ids):
            raise ValueError("two vocabulary pieces share a 64-bit hash; rename one of them")
        self.piece = np.full(len(self.keys), -1, dtype=np.int64)
        np.maximum.at(self.piece, inverse, value)
        self.prefix = np.zeros(len(self.keys), dtype=bool)
        self.prefix[inverse[value < 0]] = True  # also when the same string is another piece
        # Fibonacci hashing spreads short strings' small hashes over the buckets.
        order = np.argsort(self.keys * _MIX)
        self.keys, self.piece, self.prefix = self.keys[order], self.piece[order], self.prefix[order]
        bits = max(1, int(np.ceil(np.log2(2 * len(self.keys) + 1))))
        self.shift = np.uint64(64 - bits)
        bucket_of_key = (self.keys * _MIX) >> self.shift
        self.bucket = np.searchsorted(bucket_of_key, np.arange(2**bits + 1, dtype=np.uint64))

    def lookup(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Piece id (-1 if none) and whether the string is a proper prefix of some piece."""
        b = ((query * _MIX) >> self.shift).astype(np.int64)
        cand, stop = self.bucket[b], self.bucket[b + 1]
        found = np.full(len(query), -1, dtype=np.int64)
        todo = np.flatnonzero(cand < stop)
        while todo.size:
            match = self.keys[cand[todo]] == query[todo]
            found[todo[match]] = cand[todo[match]]
            todo = todo[~match]
            cand[todo] += 1
            todo = todo[cand[todo] < stop[todo]]
        return np.where(found >= 0, self.piece[found], -1), (found >= 0) & self.prefix[found]


def _group_logsumexp(values: np.ndarray, group: np.ndarray, top: np.ndarray) -> np.ndarray:
    safe_top = np.where(np.isfinite(top), top, 0.0)
    sizes = np.diff(group, append=len(values))
    with np.errstate(divide="ignore"):
        return safe_top + np.log(np.add.reduceat(np.exp(values - np.repeat(safe_top, sizes)), group))


def word_logliks(model: UnigramModel, words: list[str]) -> np.ndarray:
    """log P(word) = log of the sum over all segmentations of the product of piece probabilities."""
    lattice = Lattice(model, words)
    alpha, _ = lattice.forward(lattice.edge_scores(model))
    return alpha[lattice.final_nodes()]


def corpus_loglik(model: UnigramModel, corpus: WordCorpus) -> float:
    """Eq. 5.2, L_P(V) = sum over units of count x log P(unit) (sentencepiece's E-step objective)."""
    return float(corpus.counts @ word_logliks(model, corpus.words))


def viterbi(model: UnigramModel, words: list[str]) -> list[list[str]]:
    """Best segmentation of each word (unknown characters come back as themselves)."""
    lattice = Lattice(model, words)
    _, best = lattice.forward(lattice.edge_scores(model), viterbi=True)
    owner, edge = lattice.backtrack(best, np.arange(len(words)))
    paths: list[list[str]] = [[] for _ in words]
    for o, e in zip(owner[::-1], edge[::-1]):  # reversed: first edge of each word first
        unknown_char = words[o][lattice.start[e]]
        paths[o].append(unknown_char if lattice.unknown[e] else model.pieces[lattice.piece[e]])
    return paths


def corpus_loglik_without(
    model: UnigramModel, corpus: WordCorpus, piece: str, renormalize: bool = True
) -> float:
    """Exact L_P(V - piece) by recomputing the whole corpus likelihood (brute force, for tests).

    With ``renormalize`` the remaining pieces' probabilities are rescaled to keep their total
    (p_j / (Z - p_i) * Z, Z = sum over matchable pieces), so the model stays a distribution.
    """
    i = model.pieces.index(piece)
    reduced = model.subset(np.arange(len(model.pieces)) != i)
    if renormalize:
        z = np.exp(model.scores[model.matchable]).sum()
        shift = np.log(z / (z - np.exp(model.scores[i])))
        reduced.scores = np.where(reduced.matchable, reduced.scores + shift, reduced.scores)
    return corpus_loglik(reduced, corpus)


def exact_removal_loss(model: UnigramModel, corpus: WordCorpus, renormalize: bool = True) -> np.ndarray:
    """Exact eq. 5.2 loss L_P(V) - L_P(V - x_i), one full recomputation per piece: O(|V| x corpus),
    for tests and tiny vocabularies. Non-matchable pieces get +inf."""
    base = corpus_loglik(model, corpus)
    loss = np.full(len(model.pieces), np.inf)
    for i in np.flatnonzero(model.matchable):
        loss[i] = base - corpus_loglik_without(model, corpus, model.pieces[i], renormalize)
    return loss


def removal_loss(model: UnigramModel, corpus: WordCorpus) -> np.ndarray:
    """Per-piece removal loss (eq. 5.2) with sentencepiece's ``PruneSentencePieces`` approximation.

    NOT the exact likelihood difference (see `exact_removal_loss`). As sentencepiece's
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
    # One lattice for the corpus words and the pieces' own strings (often the same string).
    matchable = np.flatnonzero(model.matchable)
    strings = list(dict.fromkeys(corpus.words + [model.pieces[i] for i in matchable]))
    index = {w: k for k, w in enumerate(strings)}
    piece_string = np.array([index[model.pieces[i]] for i in matchable], dtype=np.int64)
    lattice = Lattice(model, strings)
    _, best = lattice.forward(scores := lattice.edge_scores(model), viterbi=True)

    n_pieces = len(model.pieces)
    counts = np.concatenate([corpus.counts, np.zeros(len(strings) - len(corpus.words))])
    owner, edge = lattice.backtrack(best, np.arange(len(corpus.words)))
    freq = np.bincount(lattice.piece[edge], weights=counts[owner], minlength=n_pieces)

    # A piece is its own Viterbi path iff the best edge into its string's end spans it whole.
    own_best = best[lattice.final_nodes()[piece_string]]
    is_own_best = (lattice.piece[own_best] == matchable) & (lattice.start[own_best] == 0)
    # 2nd-best path = best path that avoids the whole-string edge of the piece itself.
    string_piece = np.full(len(strings), -2, dtype=np.int64)
    string_piece[piece_string] = matchable
    self_edge = lattice.piece == string_piece[lattice.string]
    _, best_alt = lattice.forward(np.where(self_edge, -np.inf, scores), viterbi=True)
    alt_owner, alt_edge = lattice.backtrack(best_alt, piece_string[is_own_best])
    owner_piece, alt_pid = string_piece[alt_owner], lattice.piece[alt_edge]
    n_alt = np.bincount(owner_piece, minlength=n_pieces)

    total, new_total = freq.sum(), freq.sum() + freq * (n_alt - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        alt_terms = np.log(freq[alt_pid] + freq[owner_piece]) - np.log(new_total[owner_piece])
        alt_logprob = np.bincount(owner_piece, weights=alt_terms, minlength=n_pieces)
        loss = (freq / total) * (np.log(freq / total) - alt_logprob)

    kept = np.isin(np.arange(n_pieces), matchable[is_own_best]) & (freq > 0)
    result = np.where(kept, np.where(n_alt > 0, loss, np.inf), 0.0)
    return np.where(model.matchable, result, np.inf)


def expected_counts(model: UnigramModel, corpus: WordCorpus) -> tuple[np.ndarray, float]:
    """E-step: expected piece counts (forward-backward marginals) and the corpus log-likelihood."""
    lattice = Lattice(model, corpus.words)
    scores = lattice.edge_scores(model)
    alpha, beta = lattice.forward(scores)[0], lattice.backward(scores)
    z = alpha[lattice.final_nodes()]
    posterior = np.exp(alpha[lattice.src] + scores + beta[lattice.dst] - z[lattice.string])
    weights = posterior * corpus.counts[lattice.string]
    counts = np.bincount(lattice.piece, weights=weights, minlength=len(model.pieces))
    return counts, float(corpus.counts @ z)


def reestimate_scores(model: UnigramModel, corpus: WordCorpus, n_iter: int = 2) -> UnigramModel:
    """EM re-estimation of matchable pieces' scores after pruning: sentencepiece's Bayesian M-step
    digamma(c_i) - digamma(sum c), with counts floored at 0.5 (where sentencepiece would drop the
    piece) so that required pieces stay, with the lowest scores."""
    current = UnigramModel(list(model.pieces), model.scores.copy(), model.types.copy())
    mask = current.matchable
    for _ in range(n_iter):
        counts, _ = expected_counts(current, corpus)
        c = np.maximum(counts[mask], 0.5)
        current.scores[mask] = digamma(c) - digamma(c.sum())
    return current
