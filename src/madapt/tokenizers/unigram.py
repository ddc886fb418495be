"""Unigram language model over a piece vocabulary and its corpus of unique words (seed 000 §5.3.1).

The corpus is pretokenised as sentencepiece trains (`units`: its normaliser, then a cut before
every "▁" only): only *unique* units are processed, weighted by their counts. Segmentations come
from `lattice.Lattice`. Here: the model, word counting and the exact (brute-force) likelihoods
the tests use as references; one pruning round's fast statistics are in `unigram_round`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as pb

from madapt.errors import WeightsError
from madapt.tokenizers.lattice import UNK_PENALTY, Lattice
from madapt.tokenizers.units import SPACE, Normalizer, UnitMode, split_units, whitespace_normalizer

# sentencepiece ModelProto.SentencePiece.Type values.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
__all__ = [
    "BYTE",
    "CONTROL",
    "NORMAL",
    "SPACE",
    "UNKNOWN",
    "UNK_PENALTY",
    "UNUSED",
    "USER_DEFINED",
    "UnigramModel",
    "WordCorpus",
    "corpus_loglik",
    "corpus_loglik_without",
    "exact_removal_loss",
    "read_model_proto",
    "viterbi",
    "word_counts",
    "word_logliks",
]


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
    """Unique units (`units.split_units`) and how often each occurs."""

    words: list[str]
    counts: np.ndarray


def word_counts(
    sentences: Iterable[str], normalize: Normalizer | None = None, mode: UnitMode = "space", batch: int = 4096
) -> WordCorpus:
    """Unique units and their counts as sentencepiece's trainer counts words (`units`): each text
    normalised by ``normalize`` (a ModelProto's, `units.sp_normalizer`; default: what the models
    `evaluate.train_unigram` trains do), then cut by `units.split_units` in ``mode``."""
    normalize = normalize or whitespace_normalizer
    counter: Counter[str] = Counter()
    chunk: list[str] = []
    for sentence in sentences:
        chunk.append(sentence)
        if len(chunk) == batch:
            counter.update(u for text in normalize(chunk) for u in split_units(text, mode))
            chunk = []
    if chunk:
        counter.update(u for text in normalize(chunk) for u in split_units(text, mode))
    words = sorted(counter)
    return WordCorpus(words, np.array([counter[w] for w in words], float))


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
