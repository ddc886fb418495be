"""Seeded random segmentation for the scoring LM's training text (seed 000 §5.3.2.1).

ADAT trains each round's LM on text segmented by *random* Viterbi sampling (§5.3.2.1), so that
pieces the best path rarely picks still get trained. The distribution is sentencepiece's
``encode(text, enable_sampling=True, alpha=α, nbest_size=-1)``: over all segmentations x of a
text,

    P(x) ∝ exp(α · Σ_i log p(x_i)),

i.e. the Unigram lattice with every piece score scaled by α. sentencepiece draws from it with a
process-global generator that cannot be reseeded reproducibly across processes, so a run resumed
in a new process would train a different LM. `SegmentationSampler` draws from the same
distribution by forward-filtering backward-sampling (FFBS) over our own lattice
(`unigram.Lattice`), driven by a ``numpy.random.Generator`` the caller passes in: the ids are a
pure function of (generator state, texts, pieces, α).

FFBS: the forward pass gives F(j) = log Σ over paths into node j of exp(α·score); walking back
from the end node, an incoming edge e = (i → j) is drawn with probability
exp(F(i) + α·s_e − F(j)) (these sum to one over the edges into j), which samples a whole path
with probability exp(α·Σ s)/exp(F(end)).

Exactness with respect to sentencepiece's own sampler (same ModelProto):

* Text is normalised by sentencepiece's normaliser of that ModelProto (deterministic C++), so the
  lattice is built over the very string sentencepiece segments.
* Lattice rules are `unigram.Lattice`'s (sentencepiece's ``PopulateNodes``: NORMAL and
  USER_DEFINED pieces match; a character no one-character piece covers gets an unknown edge
  scored ``min_score - 10``). Every string has a path, so every text can be sampled.
* When no piece holds "▁" after its first character (true for every model trained with
  ``split_by_whitespace``; checked), every segmentation has a boundary before each "▁": the
  distribution factorises over "▁"-prefixed units, which are sampled independently and whose
  forward tables are cached per unique unit. Otherwise each whole text is one unit.
* An unknown edge becomes the UTF-8 byte pieces of its character under byte fallback, else
  ``<unk>``, with runs of ``<unk>`` in one text merged into one, as sentencepiece emits them.

Known difference: sentencepiece scores USER_DEFINED pieces specially (length x max score); our
lattice uses their stored score. ADAT models have no USER_DEFINED pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from madapt.tokenizers.lattice import Lattice, _PieceTable
from madapt.tokenizers.unigram import BYTE, UnigramModel, read_model_proto
from madapt.tokenizers.units import Normalizer, split_units, unit_mode, whitespace_normalizer


class SegmentationSampler:
    """FFBS sampler over one vocabulary's Unigram lattice; see the module docstring.

    The per-unit tables grow as new units are seen (one lattice per call, for the new units only),
    so repeated passes over a corpus cost only the backward walks.
    """

    def __init__(
        self,
        model: UnigramModel,
        alpha: float = 0.1,
        normalize: Normalizer | None = None,
        byte_fallback: bool | None = None,
    ) -> None:
        """``byte_fallback``: the ModelProto's ``trainer_spec.byte_fallback``; None = whether the
        model has all 256 ``<0xXX>`` BYTE pieces."""
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.model, self.alpha = model, float(alpha)
        self._normalize = normalize or whitespace_normalizer
        byte_of = {p: i for i, (p, t) in enumerate(zip(model.pieces, model.types)) if t == BYTE}
        self._byte_id = np.array([byte_of.get(f"<0x{b:02X}>", -1) for b in range(256)], dtype=np.int64)
        has_bytes = bool((self._byte_id >= 0).all())
        if byte_fallback and not has_bytes:
            raise ValueError("byte fallback needs the 256 <0xXX> BYTE pieces in the model")
        self.byte_fallback = has_bytes if byte_fallback is None else byte_fallback
        matchable = [p for p, m in zip(model.pieces, model.matchable) if m]
        self.unit_mode = unit_mode(matchable)
        self._piece_table = _PieceTable(model)
        self._index: dict[str, int] = {}  # unit string -> unit id, in first-seen order
        self._n_nodes = self._n_edges = 0
        self._final = np.zeros(0, np.int64)  # per unit: its end node
        self._first_in = np.zeros(0, np.int64)  # per node: first incoming edge (-1 at a unit start)
        self._n_in = np.zeros(0, np.int64)  # per node: number of incoming edges
        self._src = np.zeros(0, np.int64)  # per edge: start node
        self._cdf = np.zeros(0)  # per edge: cumulative probability among the edges into its end node
        self._at_start = np.zeros(0, bool)  # per edge: starts at its unit's first character
        self._tok_ptr = np.zeros(0, np.int64)  # per edge: where its token ids start in _tokens
        self._tok_len = np.zeros(0, np.int64)  # per edge: how many ids (bytes of an unknown char)
        self._tokens = np.zeros(0, np.int64)

    @classmethod
    def from_proto(cls, model_proto: bytes, alpha: float = 0.1) -> SegmentationSampler:
        """Sampler for a serialized sentencepiece ModelProto, normalising with its own normaliser."""
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=model_proto)
        byte_fallback = read_model_proto(model_proto).trainer_spec.byte_fallback
        return cls(UnigramModel.from_sentencepiece(model_proto), alpha, sp.normalize, byte_fallback)

    @property
    def n_cached_units(self) -> int:
        return len(self._index)

    def units(self, normalized: str) -> list[str]:
        """The independent units of a normalised text (see the module docstring)."""
        return split_units(normalized, self.unit_mode)

    def sample_flat(self, texts: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One sampled segmentation of every text: all ids concatenated, and each text's id count."""
        unit_of_walker, per_text, new = self._unit_ids(texts)  # one walker per unit occurrence
        if new:
            self._grow(new)
        edges, owner, rank = self._walk(self._final[unit_of_walker], rng)
        # Each walker's edges come out last-first; order them by walker, then first edge first.
        per_walker = np.bincount(owner, minlength=len(unit_of_walker))
        position = np.cumsum(per_walker)[owner] - 1 - rank
        path = np.empty(len(owner), np.int64)
        path[position] = edges
        # Expand edges into token ids (an unknown character can be several byte ids).
        lengths = self._tok_len[path]
        if (lengths == 1).all():
            ids = self._tokens[self._tok_ptr[path]]
        else:
            starts = np.repeat(self._tok_ptr[path] - (np.cumsum(lengths) - lengths), lengths)
            ids = self._tokens[starts + np.arange(lengths.sum())]
        text_of_walker = np.repeat(np.arange(len(texts)), per_text)
        edge_text = np.repeat(text_of_walker, per_walker)
        token_text = np.repeat(edge_text, lengths)
        if not self.byte_fallback:  # sentencepiece merges a run of unknowns into one <unk>
            unk = ids == self.model.unk_id
            repeat = unk[1:] & unk[:-1] & (token_text[1:] == token_text[:-1])
            keep = np.concatenate([[True], ~repeat]) if len(ids) else np.zeros(0, bool)
            ids, token_text = ids[keep], token_text[keep]
        return ids, np.bincount(token_text, minlength=len(texts))

    def sample(self, texts: Sequence[str], rng: np.random.Generator) -> list[list[int]]:
        """One sampled segmentation (token ids) per text; ids of the sampler's model."""
        ids, counts = self.sample_flat(texts, rng)
        return [part.tolist() for part in np.split(ids, np.cumsum(counts)[:-1])] if len(texts) else []

    def encoder(self, rng: np.random.Generator) -> Callable[[list[str]], list[list[int]]]:
        """A batch encoder (`lm_scoring.Encode`) drawing from ``rng``: each call a new sample."""
        return lambda texts: self.sample(texts, rng)

    # -- internals ---------------------------------------------------------------------------

    def _unit_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        index, new = self._index, []
        ids: list[int] = []
        per_text = np.zeros(len(texts), np.int64)
        for k, text in enumerate(self._normalize(list(texts))):
            units = self.units(text)
            per_text[k] = len(units)
            for unit in units:
                uid = index.get(unit)
                if uid is None:  # insertion order, not string hashes: same ids in every process
                    uid = index[unit] = len(index)
                    new.append(unit)
                ids.append(uid)
        return np.array(ids, dtype=np.int64), per_text, new

    def _grow(self, units: list[str]) -> None:
        """Forward tables of new units, appended to the cache."""
        lattice = Lattice(self.model, units, self._piece_table)
        scores = self.alpha * lattice.edge_scores(self.model)
        forward, _ = lattice.forward(scores)
        n_edges = len(lattice.piece)
        with np.errstate(under="ignore"):
            prob = np.exp(forward[lattice.src] + scores - forward[lattice.dst])
        # Edges into one node are adjacent (Lattice sorts by end, then string, then start);
        # a per-group running sum, one position at a time, keeps each CDF exact within its group.
        group = np.flatnonzero(np.diff(lattice.dst, prepend=-1))
        sizes = np.diff(group, append=n_edges)
        cdf = prob.copy()
        for j in range(1, int(sizes.max(initial=1))):
            at = group[sizes > j] + j
            cdf[at] += cdf[at - 1]
        cdf /= np.repeat(cdf[group + sizes - 1], sizes)  # the last edge of a group ends at 1.0

        first_in = np.full(lattice.n_nodes, -1, np.int64)
        n_in = np.zeros(lattice.n_nodes, np.int64)
        first_in[lattice.dst[group]] = group + self._n_edges
        n_in[lattice.dst[group]] = sizes

        tok_len = np.ones(n_edges, np.int64)
        tokens_of_edge = lattice.piece.astype(np.int64)
        unknown = np.flatnonzero(lattice.unknown)
        byte_ids: dict[int, np.ndarray] = {}
        if self.byte_fallback:
            for e in unknown:
                char = units[lattice.string[e]][lattice.start[e]]
                byte_ids[e] = self._byte_id[np.frombuffer(char.encode("utf-8"), np.uint8)]
                tok_len[e] = len(byte_ids[e])
        tok_ptr = np.cumsum(tok_len) - tok_len
        tokens = np.repeat(tokens_of_edge, tok_len)
        for e, ids in byte_ids.items():
            tokens[tok_ptr[e] : tok_ptr[e] + len(ids)] = ids

        self._final = np.concatenate([self._final, lattice.final_nodes() + self._n_nodes])
        self._first_in = np.concatenate([self._first_in, first_in])
        self._n_in = np.concatenate([self._n_in, n_in])
        self._src = np.concatenate([self._src, lattice.src + self._n_nodes])
        self._cdf = np.concatenate([self._cdf, cdf])
        self._at_start = np.concatenate([self._at_start, lattice.start == 0])
        self._tok_ptr = np.concatenate([self._tok_ptr, tok_ptr + len(self._tokens)])
        self._tok_len = np.concatenate([self._tok_len, tok_len])
        self._tokens = np.concatenate([self._tokens, tokens])
        self._n_nodes += lattice.n_nodes
        self._n_edges += n_edges

    def _walk(self, nodes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Backward sampling from every end node in ``nodes`` at once, one edge per walker and step.

        Returns the drawn edges, their walker, and their step (0 = the walker's last edge)."""
        alive = np.arange(len(nodes))
        out_edge, out_owner, out_rank = [], [], []
        step = 0
        while alive.size:
            u = rng.random(alive.size)
            first, last = self._first_in[nodes], self._n_in[nodes] - 1
            # Inverse CDF: the chosen edge is the first whose CDF exceeds u; advance walkers one
            # candidate at a time while the CDF is still <= u (most nodes have a few edges).
            offset = np.zeros(alive.size, np.int64)
            todo = np.flatnonzero(last > 0)
            while todo.size:
                todo = todo[self._cdf[first[todo] + offset[todo]] <= u[todo]]
                offset[todo] += 1
                todo = todo[offset[todo] < last[todo]]
            edge = first + offset
            out_edge.append(edge), out_owner.append(alive), out_rank.append(np.full(alive.size, step))
            more = ~self._at_start[edge]
            alive, nodes = alive[more], self._src[edge[more]]
            step += 1
        if not out_edge:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(out_edge), np.concatenate(out_owner), np.concatenate(out_rank)


def length_ratio(
    sampler: SegmentationSampler, viterbi_lengths: np.ndarray, texts: Sequence[str], rng: np.random.Generator
) -> float:
    """Sampled tokens over Viterbi tokens of ``texts`` (``viterbi_lengths``: tokens per text)."""
    sampled = int(sampler.sample_flat(texts, rng)[1].sum())
    return sampled / max(int(np.sum(viterbi_lengths)), 1)


def calibrate_alpha(
    model_proto: bytes,
    texts: Sequence[str],
    max_ratio: float,
    seed: int,
    low: float = 0.02,
    high: float = 4.0,
    steps: int = 8,
    margin: float = 0.05,
) -> tuple[float, float]:
    """The smallest α (the most random segmentation, §5.3.2.1) whose sampled segmentation of
    ``texts`` is at most ``max_ratio - margin`` times as long as Viterbi's, by bisection on log α
    with the same random numbers for every α; returns (α, measured ratio).

    The length ratio falls as α grows (α → ∞ is Viterbi); the margin keeps the ratio of other
    text from the same source under ``max_ratio`` despite sampling noise. If even ``high`` gives
    a longer segmentation, ``high`` is returned with its ratio (the caller reports it)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    viterbi_lengths = np.array([len(ids) for ids in sp.encode(list(texts))])
    model = UnigramModel.from_sentencepiece(model_proto)
    byte_fallback = read_model_proto(model_proto).trainer_spec.byte_fallback

    def ratio(alpha: float) -> float:
        sampler = SegmentationSampler(model, alpha, sp.normalize, byte_fallback)
        return length_ratio(sampler, viterbi_lengths, texts, np.random.default_rng(seed))

    target = max_ratio - margin
    r_high = ratio(high)
    if r_high > target:
        return high, r_high
    r_low = ratio(low)
    if r_low <= target:
        return low, r_low
    for _ in range(steps):
        mid = float(np.sqrt(low * high))
        r_mid = ratio(mid)
        if r_mid <= target:
            high, r_high = mid, r_mid
        else:
            low = mid
    return high, r_high
