"""BytePiece (Su 2023; seed 000 Table 5.1): a byte-level Unigram vocabulary trained with a byte
n-gram language model, as a baseline and as ADAT's initial vocabulary.

The ``bytepiece`` package cannot be installed here (it needs a bytes build of pyahocorasick from
git), so this is our implementation of its training algorithm (bojone/bytepiece ``Trainer``,
version 0.6 defaults: ``order=6``, ``max_piece_length=36``, ``min_count=2``,
``ensure_unicode=True``, ``isolate_digits=False``):

1. Text is cut into chunks: a line with its trailing newlines (at most 10,000 bytes before them,
   at most 100 newlines), or with ``isolate_digits`` every digit alone; chunks are UTF-8 bytes.
2. Byte n-grams up to ``order`` are counted within chunks; every one of the 256 bytes gets a
   count of at least 1; n-grams (n > 1) seen fewer than ``min_count`` times are dropped; each
   n-gram gets log P(last byte | the n - 1 before) = log c(n-gram) - log c(its prefix).
3. Each chunk is segmented by Viterbi over states "position j within the current piece"
   (j < order; from any state a new piece may start, state j continues to j + 1 and the last
   state to itself), byte i in state j scoring log P(byte i | the j bytes before it). With
   ``ensure_unicode`` a piece cannot start on a UTF-8 continuation byte. Pieces are counted.
4. Pieces longer than ``max_piece_length`` or rarer than ``min_count`` (single bytes excepted)
   are dropped and their counts given to their split by a Unigram tokenizer of the kept pieces
   (scores log(count / total)); then, until the size stops changing, every kept piece is split
   by the tokenizer of the kept pieces and the counts recollected ("wasted" pieces vanish).
5. Above the requested size the pieces are sorted by (multi-byte, count descending, length
   descending, bytes), cut, the dropped ones split into the kept ones, and step 4's loop rerun.

Deviations, each for a reason: text is not NFC-normalised (every madapt tokenizer is lossless
on raw text, `units`); the Unigram splits of steps 4-5 use our lattice Viterbi
(`lattice.Lattice`) over bytes, whose tie-breaking may differ from BytePiece's Cython one; the
vocabulary is stored as a sentencepiece Unigram ModelProto (`to_model_proto`) so that every
tokenizer of the comparison, and ADAT's rounds, share one encoder: multi-byte pieces (valid
UTF-8 by ``ensure_unicode``) and the ASCII bytes seen in the text become pieces with BytePiece's
scores, the other single bytes are sentencepiece's byte-fallback pieces. BytePiece's Viterbi is
then sentencepiece's, up to the score of an unknown character's bytes (sentencepiece charges
the unknown-character penalty, BytePiece the bytes' own scores).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sentencepiece import sentencepiece_model_pb2 as pb

from madapt.tokenizers.lattice import Lattice
from madapt.tokenizers.unigram import CONTROL, NORMAL, UNKNOWN, UnigramModel, read_model_proto
from madapt.tokenizers.units import whitespace_normalizer

SPECIAL_IDS = 3  # BytePiece's <pad> <bos> <eos>


@dataclass(frozen=True)
class BytePieceSettings:
    """BytePiece ``Trainer`` arguments (0.6 defaults)."""

    order: int = 6
    max_piece_length: int = 36
    min_count: int = 2
    isolate_digits: bool = False
    ensure_unicode: bool = True
    max_chunk: int = 10_000


def chunks(text: str, settings: BytePieceSettings = BytePieceSettings()) -> list[bytes]:
    """Step 1: lines with their trailing newlines (or single digits), as UTF-8 bytes."""
    n = settings.max_chunk
    if settings.isolate_digits:
        pattern = rf"\d|[^\n\d]{{0,{n}}}\n{{1,100}}|[^\n\d]{{1,{n}}}"
    else:
        pattern = rf".{{0,{n}}}\n{{1,100}}|.{{1,{n}}}"
    return [t.encode("utf-8") for t in re.findall(pattern, text)]


class NgramModel:
    """Step 2: conditional byte n-gram log-probabilities, looked up by (length, packed bytes)."""

    def __init__(self, texts: list[bytes], settings: BytePieceSettings) -> None:
        self.order = settings.order
        data, starts = _concat(texts)
        room = _room(data, starts)
        self.tables: list[tuple[np.ndarray, np.ndarray]] = []  # per length: sorted codes, log counts
        counts: list[tuple[np.ndarray, np.ndarray]] = []
        for n in range(1, self.order + 1):
            valid = np.flatnonzero(room >= n)
            codes, c = np.unique(_pack(data, valid, n), return_counts=True)
            counts.append((codes, c.astype(np.float64)))
        codes1, c1 = counts[0]
        full = np.ones(256)  # every byte at least once (and the total grows with the added ones)
        full[codes1.astype(np.int64)] = c1
        total = float(len(data) + (256 - len(codes1)))
        counts[0] = (np.arange(256, dtype=np.uint64), full)
        log_prev = {0: (np.zeros(1, np.uint64), np.array([math.log(total)]))}
        for n in range(1, self.order + 1):
            codes, c = counts[n - 1]
            keep = c >= (settings.min_count if n > 1 else 0)
            codes, logc = codes[keep], np.log(c[keep])
            prefix_codes, prefix_logc = log_prev[n - 1]
            prefix = codes & np.uint64((1 << (8 * (n - 1))) - 1) if n > 1 else np.zeros(len(codes), np.uint64)
            self.tables.append((codes, logc - prefix_logc[np.searchsorted(prefix_codes, prefix)]))
            log_prev[n] = (codes, logc)

    def scores(self, data: np.ndarray, room_back: np.ndarray) -> np.ndarray:
        """[position, state j]: log P(byte | the j bytes before it), -inf where unknown or the
        chunk has fewer than j bytes before the position."""
        out = np.full((len(data), self.order), -np.inf)
        for j in range(self.order):
            pos = np.flatnonzero(room_back >= j)
            codes, logp = self.tables[j]
            key = _pack(data, pos - j, j + 1)
            at = np.minimum(np.searchsorted(codes, key), max(len(codes) - 1, 0))
            found = codes[at] == key if len(codes) else np.zeros(len(key), bool)
            out[pos[found], j] = logp[at[found]]
        return out


def _concat(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    data = np.frombuffer(b"".join(texts), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum([len(t) for t in texts])]).astype(np.int64)
    return data, starts


def _room(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Bytes from each position to the end of its chunk (itself included)."""
    chunk = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    return starts[1:][chunk] - np.arange(len(data))


def _pack(data: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """The n bytes from each position packed little-endian into a uint64 (n <= 8)."""
    key = np.zeros(len(pos), np.uint64)
    for k in range(n):
        key |= data[pos + k].astype(np.uint64) << np.uint64(8 * k)
    return key


def segment(texts: list[bytes], ngrams: NgramModel, ensure_unicode: bool = True) -> tuple[bytes, np.ndarray]:
    """Step 3: the n-gram Viterbi segmentation of every chunk, all chunks a position at a time.
    Returns the chunks joined and the position of every piece start in it (chunk starts included)."""
    data, starts = _concat(texts)
    lengths = np.diff(starts)
    back = np.arange(len(data)) - np.repeat(starts[:-1], lengths)  # bytes before, within the chunk
    nodes = ngrams.scores(data, back)
    if ensure_unicode:
        nodes[(data >= 128) & (data < 192), 0] = -np.inf
    order, longest = ngrams.order, int(lengths.max(initial=0))
    by_length = np.argsort(-lengths, kind="stable")  # the chunks active at position i: a prefix
    active = np.searchsorted(-lengths[by_length], -np.arange(longest + 2), side="right")  # length >= i
    first = starts[:-1][by_length]
    final = np.zeros(len(texts), np.int64)  # best state at each chunk's last byte (by rank)
    score = nodes[first[: active[1]]]
    routes: list[np.ndarray] = [np.zeros((0, order), np.int8)]
    for i in range(1, longest):
        b = active[i + 1]
        final[b : active[i]] = score[b : active[i]].argmax(1)  # chunks whose last byte is i - 1
        prev, here = score[:b], nodes[first[:b] + i]
        # The byte's score is added before choosing, as BytePiece does: sums that round to a tie
        # then go to the first state, as its argmax does.
        score = np.empty((b, order))
        route = np.empty((b, order), np.int8)
        start = prev + here[:, :1]  # a new piece, from any state
        route[:, 0], score[:, 0] = start.argmax(1), start.max(1)
        for j in range(1, order - 1):
            route[:, j], score[:, j] = j - 1, prev[:, j - 1] + here[:, j]
        come, loop = prev[:, order - 2] + here[:, order - 1], prev[:, order - 1] + here[:, order - 1]
        route[:, order - 1] = np.where(loop > come, order - 1, order - 2)  # the last state
        score[:, order - 1] = np.maximum(come, loop)
        routes.append(route)
    if longest:
        final[: active[longest]] = score.argmax(1)
    state_at = np.zeros(len(data), np.int8)
    if longest:
        cur = final[: active[longest]]
        state_at[first[: len(cur)] + longest - 1] = cur
        for i in range(longest - 1, 0, -1):  # the states at position i - 1 from those at i
            b = active[i + 1]
            cur = np.concatenate([routes[i][np.arange(b), cur], final[b : active[i]]])
            state_at[first[: len(cur)] + i - 1] = cur
    return data.tobytes(), np.flatnonzero(state_at == 0)


def segment_texts(texts: list[bytes], ngrams: NgramModel, ensure_unicode: bool = True) -> list[list[bytes]]:
    """`segment` as one list of pieces per chunk."""
    joined, cuts = segment(texts, ngrams, ensure_unicode)
    _, starts = _concat(texts)
    out = []
    for lo, hi in itertools.pairwise(starts):
        inner = cuts[(cuts >= lo) & (cuts < hi)]
        bounds = np.append(inner, hi)
        out.append([joined[s:e] for s, e in itertools.pairwise(bounds)])
    return out


def count_pieces(texts: list[bytes], ngrams: NgramModel, ensure_unicode: bool = True) -> Counter[bytes]:
    """How often each piece occurs in the n-gram segmentation of ``texts``."""
    joined, cuts = segment(texts, ngrams, ensure_unicode)
    _, starts = _concat(texts)
    ends = np.append(cuts[1:], len(joined))
    ends = np.minimum(ends, starts[1:][np.searchsorted(starts, cuts, side="right") - 1])
    return Counter(joined[s:e] for s, e in zip(cuts.tolist(), ends.tolist()))


def _byte_model(pieces: dict[bytes, int]) -> tuple[UnigramModel, list[bytes]]:
    """A Unigram model over bytes-as-latin-1-characters with BytePiece's scores log(count/total)."""
    keys = sorted(pieces)
    total = math.log(sum(pieces.values()))
    model = UnigramModel(
        ["\x00<unk>", *(k.decode("latin-1") for k in keys)],
        [0.0, *(math.log(pieces[k]) - total for k in keys)],
        [UNKNOWN] + [NORMAL] * len(keys),
    )
    return model, keys


def split_pieces(keep: dict[bytes, int], drop: Iterable[tuple[bytes, int]]) -> Counter[bytes]:
    """Each dropped piece's count added to the pieces of its Viterbi split by the kept pieces."""
    model, _ = _byte_model(keep)
    drop = list(drop)
    counter: Counter[bytes] = Counter()
    if not drop:
        return counter
    strings = [k.decode("latin-1") for k, _ in drop]
    lattice = Lattice(model, strings)
    _, best = lattice.forward(lattice.edge_scores(model), viterbi=True)
    owner, edge = lattice.backtrack(best, np.arange(len(strings)))
    weights = np.array([v for _, v in drop], dtype=np.int64)
    for o, e in zip(owner.tolist(), edge.tolist()):
        counter[model.pieces[lattice.piece[e]].encode("latin-1")] += int(weights[o])
    return counter


def _prune_wasted(keep: dict[bytes, int]) -> dict[bytes, int]:
    while True:
        size = len(keep)
        keep = dict(split_pieces(keep, keep.items()))
        if len(keep) == size:
            return keep


def prune_pieces(pieces: Counter[bytes], max_size: int, settings: BytePieceSettings) -> dict[bytes, int]:
    """Steps 4 and 5: at most ``max_size`` entries counting BytePiece's 3 specials."""
    pieces = Counter(pieces)
    for b in range(256):
        pieces.setdefault(bytes([b]), 1)
    keep = {
        k: v
        for k, v in pieces.items()
        if len(k) == 1 or (len(k) <= settings.max_piece_length and v >= settings.min_count)
    }
    for k, v in split_pieces(keep, [(k, v) for k, v in pieces.items() if k not in keep]).items():
        keep[k] += v
    keep = _prune_wasted(keep)
    return cut(keep, max_size)


def cut(keep: dict[bytes, int], max_size: int) -> dict[bytes, int]:
    """Step 5 alone, on a vocabulary already through step 4."""
    if len(keep) <= max_size - SPECIAL_IDS:
        return keep
    ranked = sorted(keep.items(), key=lambda t: (len(t[0]) > 1, -t[1], -len(t[0]), t[0]))
    kept = dict(ranked[: max_size - SPECIAL_IDS])
    for k, v in split_pieces(kept, ranked[max_size - SPECIAL_IDS :]).items():
        kept[k] += v
    return _prune_wasted(kept)


def train(texts: Iterable[str], settings: BytePieceSettings = BytePieceSettings()) -> dict[bytes, int]:
    """Steps 1-4: BytePiece's vocabulary before the size cut (`cut` then sizes it)."""
    parts = [c for text in texts for c in chunks(text, settings)]
    ngrams = NgramModel(parts, settings)
    counts: Counter[bytes] = Counter()
    for k in range(0, len(parts), 4096):  # bounded Viterbi tables
        counts.update(count_pieces(parts[k : k + 4096], ngrams, settings.ensure_unicode))
    return prune_pieces(counts, 1 << 62, settings)


def to_model_proto(pieces: dict[bytes, int], template: bytes) -> bytes:
    """A sentencepiece ModelProto: ``template``'s specs and specials (e.g. `evaluate.train_unigram`'s),
    the multi-byte pieces and the ASCII bytes seen in the text with scores log(count/total), and
    the 256 byte-fallback pieces (see the module docstring)."""
    proto = read_model_proto(template)
    specials = [p for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
    total = math.log(sum(pieces.values()))
    normal = {}
    for k, v in pieces.items():
        if len(k) > 1 or (k[0] < 128 and v > 1):
            try:
                text = whitespace_normalizer([k.decode("utf-8")])[0]
            except UnicodeDecodeError:  # only without ensure_unicode; the bytes cover it
                continue
            normal[text] = math.log(v) - total
    del proto.pieces[:]
    proto.pieces.extend(specials)
    for text, score in sorted(normal.items(), key=lambda t: (-t[1], t[0])):
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=text, score=score, type=NORMAL))
    for b in range(256):
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=f"<0x{b:02X}>", score=0.0, type=6))
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto.SerializeToString()


def bytepiece_model(
    texts: Iterable[str],
    vocab_size: int,
    template: bytes,
    settings: BytePieceSettings = BytePieceSettings(),
    tries: int = 6,
) -> bytes:
    """A BytePiece vocabulary of ``vocab_size`` sentencepiece pieces (or slightly fewer, as
    BytePiece's own cut can end below its target): the cut is retried with its target moved by
    the difference, since the conversion adds the specials and the ASCII pieces."""
    full = train(texts, settings)
    target = vocab_size
    best = to_model_proto(cut(full, target), template)
    for _ in range(tries):
        size = len(read_model_proto(best).pieces)
        if size == vocab_size:
            break
        target += vocab_size - size
        candidate = to_model_proto(cut(full, target), template)
        if (
            abs(len(read_model_proto(candidate).pieces) - vocab_size) < abs(size - vocab_size)
            or size > vocab_size
        ):
            best = candidate
    return best
