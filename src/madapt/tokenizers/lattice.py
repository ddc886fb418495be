"""The segmentation lattice of a list of strings under a Unigram vocabulary (seed 000 §5.3.1).

All strings are segmented at once on one flat lattice (a node per character boundary, an edge per
vocabulary piece found), so forward, Viterbi and forward-backward loop over character positions
with numpy work per position, not over strings. Lattice rules are sentencepiece's
``PopulateNodes``: only NORMAL and USER_DEFINED pieces match; a position where no one-character
piece starts gets an unknown edge scored ``min_score - 10``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from madapt.tokenizers.unigram import UnigramModel

UNK_PENALTY = 10.0  # sentencepiece's kUnkPenalty


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
        # each piece hit is an edge (start character, length - 1, piece), collected column by column.
        pos = np.arange(len(codes))
        room, running = char_start[1:][string_of_char] - pos, np.zeros(len(codes), dtype=np.uint64)
        hit_pos, hit_col, hit_piece = [], [], []
        for col in range(table.max_len):
            running = running * _BASE + codes[pos + col]
            piece, is_prefix = table.lookup(running)
            hit = np.flatnonzero(piece >= 0)
            hit_pos.append(pos[hit]), hit_piece.append(piece[hit]), hit_col.append(np.full(len(hit), col))
            more = is_prefix & (room > col + 1)
            pos, room, running = pos[more], room[more], running[more]
        covered = np.zeros(len(codes), dtype=bool)
        covered[hit_pos[0] if hit_pos else []] = True
        unknown_at = np.flatnonzero(~covered)  # sentencepiece's unknown node rule
        gpos = np.concatenate([unknown_at, *hit_pos]).astype(np.int64)
        col = np.concatenate([np.zeros(len(unknown_at), np.int64), *hit_col])
        pid = np.concatenate([np.full(len(unknown_at), model.unk_id), *hit_piece]).astype(np.int64)
        unknown = np.arange(len(gpos)) < len(unknown_at)
        string = string_of_char[gpos]
        start = gpos - char_start[string]
        end = start + col + 1
        # By end position, then string, then start: stable sorts by global character position
        # (the columns are sorted runs, which timsort merges) and then by end (radix on int16).
        order = np.argsort(gpos, kind="stable")
        small = end.astype(np.int16) if end.max(initial=0) < 2**15 else end
        order = order[np.argsort(small[order], kind="stable")]
        self.offsets = np.concatenate([[0], np.cumsum(lengths + 1)])
        self.n_nodes = int(self.offsets[-1])
        # int32 edge arrays (a lattice is built per chunk, far below 2^31 nodes): half the memory.
        small_int = np.int32 if self.n_nodes < 2**31 else np.int64
        self.string, self.start = string[order].astype(small_int), start[order].astype(small_int)
        self.end, self.piece = end[order].astype(small_int), pid[order].astype(small_int)
        self.unknown = unknown[order]
        self.src = (self.offsets[self.string] + self.start).astype(small_int)
        self.dst = (self.offsets[self.string] + self.end).astype(small_int)
        bounds = np.searchsorted(self.end, np.arange(1, lengths.max(initial=0) + 2))
        self._levels = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

    @property
    def nbytes(self) -> int:
        """Memory held by the edge and node arrays."""
        arrays = (
            self.string,
            self.start,
            self.end,
            self.piece,
            self.unknown,
            self.src,
            self.dst,
            self.offsets,
        )
        return sum(a.nbytes for a in arrays)

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
        # By start position descending, then string, so edges leaving one node are adjacent:
        # stable sorts by string (edges are by end, then string) and then by descending start.
        order = np.argsort(self.string, kind="stable")
        rstart = self.start.max(initial=0) - self.start
        rstart = rstart.astype(np.int16) if rstart.max(initial=0) < 2**15 else rstart
        order = order[np.argsort(rstart[order], kind="stable")]
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
