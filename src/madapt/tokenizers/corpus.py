"""The ADAT corpus as a stream: held-out slices, a wrapping training cursor, a bounded sample.

Seed 000 §5.4.2 trains each round's scoring LM on a *different* part of the corpus ("a randomly
initialized model is trained using one-fifth of the initial corpus, approximately 0.3 billion
tokens") and scores every round on one fixed smaller subset (0.1B tokens). At that scale the
corpus cannot sit in memory, so nothing here holds more than what one consumer asks for:

* `CorpusStream` reads the corpus file (``.txt``/``.jsonl``, optionally ``.xz``/``.gz``, the readers
  of `madapt.data.text`) lazily and in file order, every time a pass is asked for.
* `HeldOut` assigns every document, by its position in the file alone, to the evaluation slice,
  the scoring slice or the training text: a pure function of (position, fractions, seed), so any
  process and any resumed run sees the same disjoint slices without a shuffled copy of the corpus.
  Held-out documents are spread evenly (every prefix of the file holds its share, ±1 document)
  instead of being drawn at random, which keeps tiny corpora from ending up with an empty slice.
* `CyclicReader` walks the training documents from a cursor, wrapping to the first one after the
  last; `lm_scoring.take_tokens` consumes whole documents from it until a round's token budget is
  met. A round therefore continues where the previous one stopped, and the cursor saved in the
  round checkpoint makes a resumed run read exactly the same text.
* `reservoir_sample` draws a seeded, bounded sample of the training documents for the statistics
  that need text rather than a stream (the initial sentencepiece vocabulary, the word counts of the
  removal loss and EM re-estimation), like sentencepiece's ``input_sentence_size``.
"""

from __future__ import annotations

import lzma
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Literal

import numpy as np

from madapt.data.text import ReadStats, iter_texts, resolve_corpus
from madapt.errors import DataError

Part = Literal["train", "eval", "score"]
PARTS: tuple[Part, ...] = ("train", "eval", "score")


@dataclass(frozen=True)
class HeldOut:
    """Which documents are held out, by position in the file (0-based among the kept documents).

    Document ``i`` is held out when ``floor((i + o + 1) h) > floor((i + o) h)`` with
    ``h = eval_fraction + score_fraction`` and a seeded phase ``o``: a Bresenham line, so exactly
    ``round(n h)`` of any ``n`` consecutive documents (±1) are held out, spread evenly. Held-out
    documents are numbered ``j`` in the same way and split between evaluation and scoring with
    ratio ``eval_fraction / h``. Both tests are pure functions of ``i``.
    """

    eval_fraction: float
    score_fraction: float
    offset: int = 0

    def __post_init__(self) -> None:
        e, s = self.eval_fraction, self.score_fraction
        if not (e > 0 and s > 0 and e + s < 1):
            raise ValueError("need eval_fraction > 0, score_fraction > 0 and their sum < 1")

    @classmethod
    def seeded(cls, eval_fraction: float, score_fraction: float, seed: int) -> HeldOut:
        """The phase is drawn from ``seed``, so another seed holds out other documents."""
        return cls(eval_fraction, score_fraction, int(np.random.default_rng(seed).integers(0, 1 << 20)))

    def part(self, i: int) -> Part:
        h = self.eval_fraction + self.score_fraction
        held = math.floor((i + self.offset) * h)
        if math.floor((i + self.offset + 1) * h) == held:
            return "train"
        q = self.eval_fraction / h
        return "eval" if math.floor((held + 1) * q) > math.floor(held * q) else "score"


@dataclass
class CorpusCounts:
    """What one pass over the corpus found: read statistics and documents/bytes per part."""

    stats: ReadStats
    docs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))


class CorpusStream:
    """A corpus file (bundled name or path) capped at ``max_bytes``, read lazily in order.

    Every method opens a new pass; nothing is cached, so memory does not grow with the corpus.
    A missing file is a `DataError` at construction, an unreadable one on the pass that hits it.
    """

    def __init__(self, name_or_path: str, max_bytes: int | None, held_out: HeldOut) -> None:
        self.name = name_or_path
        self.path = resolve_corpus(name_or_path)
        self.max_bytes = max_bytes
        self.held_out = held_out

    def documents(self, stats: ReadStats | None = None) -> Iterator[str]:
        """Every kept document in file order (the same texts `madapt.data.text.read_texts` returns)."""
        try:
            yield from iter_texts(self.path, stats, self.max_bytes)
        except (OSError, EOFError, lzma.LZMAError) as err:
            raise DataError(
                f"corpus '{self.name}'", f"cannot be read ({err})", "a readable text file"
            ) from None

    def texts(self, part: Part) -> Iterator[str]:
        """The documents of one part, in file order."""
        for i, text in enumerate(self.documents()):
            if self.held_out.part(i) == part:
                yield text

    def count(self) -> CorpusCounts:
        """One pass: documents and UTF-8 bytes (+1 per document, its separator) per part."""
        counts = CorpusCounts(ReadStats())
        for i, text in enumerate(self.documents(counts.stats)):
            part = self.held_out.part(i)
            counts.docs[part] += 1
            counts.bytes[part] += len(text.encode("utf-8")) + 1
        return counts

    def train_reader(self, start: int = 0) -> CyclicReader:
        """The training documents from the ``start``-th on, wrapping around."""
        return CyclicReader(lambda: self.texts("train"), start)


class CyclicReader:
    """Documents of a repeatable source from a cursor on, wrapping to the first after the last.

    ``open_pass()`` returns a fresh iterator over the whole source (a corpus pass or a list).
    `peek` reads ahead without consuming; `advance` consumes, so a consumer that encoded more
    documents than it used hands the rest to the next round unchanged. ``position`` is the index
    (within one pass) of the next document, the cursor a checkpoint stores.
    """

    def __init__(self, open_pass: Callable[[], Iterator[str]], start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self._open_pass = open_pass
        self._start = start
        self._source: Iterator[str] | None = None
        self._next_index = 0
        self._ahead: deque[tuple[int, str]] = deque()
        self.consumed = 0  # documents handed out by `advance`, over all passes

    @classmethod
    def over(cls, texts: Iterable[str], start: int = 0) -> CyclicReader:
        """A reader over an in-memory collection (tests, callers that already hold the text)."""
        texts = list(texts)
        return cls(lambda: iter(texts), start)

    def _read(self) -> tuple[int, str]:
        if self._source is None:  # first read: skip to the start cursor
            self._source = self._open_pass()
            skipped = sum(1 for _ in islice(self._source, self._start))
            if skipped < self._start:
                raise ValueError(
                    f"cursor {self._start} is past the end of the source ({skipped} documents); "
                    "did the corpus change since the checkpoint?"
                )
            self._next_index = self._start
        for text in self._source:
            self._next_index += 1
            return self._next_index - 1, text
        self._source, self._next_index = self._open_pass(), 0  # end of a pass: wrap
        for text in self._source:
            self._next_index = 1
            return 0, text
        raise ValueError("the source holds no documents")

    def peek(self, n: int) -> list[str]:
        """The next ``n`` documents (wrapping as often as needed), not consumed."""
        while len(self._ahead) < n:
            self._ahead.append(self._read())
        return [text for _, text in islice(self._ahead, n)]

    def advance(self, k: int) -> None:
        """Consume the next ``k`` documents."""
        self.peek(k)
        for _ in range(k):
            self._ahead.popleft()
        self.consumed += k

    def lookahead(self, n: int) -> Iterator[str]:
        """The next ``n`` documents (wrapping), read without consuming them and without holding
        them: what was already peeked, then a fresh pass of the source from there on."""
        ahead = [text for _, text in islice(self._ahead, n)]
        yield from ahead
        need = n - len(ahead)
        if need <= 0:
            return
        index = self._ahead[-1][0] + 1 if self._ahead else (self._next_index if self._source else self._start)
        source = islice(self._open_pass(), index, None)
        while need > 0:
            empty = True
            for text in islice(source, need):
                empty = False
                need -= 1
                yield text
            if need > 0:
                if empty and index == 0:
                    return  # an empty source
                source, index = self._open_pass(), 0

    @property
    def position(self) -> int:
        """Index of the next document within a pass (reads it ahead if needed, to see a wrap)."""
        self.peek(1)
        return self._ahead[0][0]


def reservoir_sample(texts: Iterable[str], k: int, seed: int, block: int = 4096) -> list[str]:
    """A uniform sample of ``k`` documents (all of them if fewer), returned in source order.

    Algorithm R with the replacement draws taken from a numpy generator seeded by ``seed`` in
    blocks (per-item generator calls would dominate on large corpora): a pure function of
    (texts, k, seed), holding ``k`` documents at a time.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    kept: list[tuple[int, str]] = []
    draws = np.zeros(0)
    for i, text in enumerate(texts):
        if i < k:
            kept.append((i, text))
            continue
        if not len(draws):
            draws = rng.random(block)
        j, draws = int(draws[0] * (i + 1)), draws[1:]
        if j < k:
            kept[j] = (i, text)
    return [text for _, text in sorted(kept)]
