"""How text becomes Unigram units: sentencepiece's normaliser and word split (seed 000 §5.3.1).

sentencepiece trains (and its removal loss, eq. 5.2, is computed) on *words*: the normalised
sentence is cut before every "▁" (U+2581, the escaped space), ``SplitIntoWords`` in
``trainer_interface.cc`` with ``treat_whitespace_as_suffix=false``. Only the space is a separator:
tabs, newlines and non-breaking spaces stay inside their word, as sentencepiece keeps them.
`split_units` is that split, and `word_counts` (in `unigram`) counts its units over the text
normalised by the very ModelProto's normaliser (`sp_normalizer`), so the units are the strings
sentencepiece's own lattice segments.

The normaliser of every vocabulary madapt trains (`trainer_options`) is sentencepiece's
``identity`` rule plus two choices made for an exact round trip through both export formats:

* ``add_dummy_prefix=false`` (sentencepiece's default is true): a text is not given a leading
  "▁". With the prefix, Hugging Face ``tokenizers`` either loses a leading space or puts a "▁"
  after every special token (its normaliser runs on each piece of text between special tokens).
  Pythia's own tokenizer and our byte-level BPE baseline add no prefix space either, so every
  tokenizer compared treats a document's first word alike.
* U+2581 in the input would decode as a space. It is escaped instead: the rules map U+2581 to
  E + "1" and E to E + "2" (E = U+E000, a private-use character), and the denormaliser maps them
  back, so decode(encode(text)) == text for every string. A prefix-free code: every E in the
  normalised text starts a two-character code, so the inverse is unambiguous, and applying the
  two inverse replacements one after the other (as the ``tokenizer.json`` decoder does) is exact.

Vocabularies that hold "▁" after the first character of a piece (BytePiece's, whose pieces cross
spaces) cannot be split at spaces; `unit_mode` then falls back to BytePiece's own chunks, lines
with their trailing newlines, and to whole texts when even those are crossed.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

SPACE = "\u2581"
ESCAPE = "\ue000"
# (source, target) code points of the normalisation rules; the denormaliser swaps them.
ESCAPE_RULES: tuple[tuple[str, str], ...] = ((SPACE, ESCAPE + "1"), (ESCAPE, ESCAPE + "2"))

Normalizer = Callable[[list[str]], list[str]]
UnitMode = Literal["space", "lines", "text"]
_LINES = re.compile(r"[^\n]*\n+|[^\n]+")


def escape(text: str) -> str:
    """The normaliser's rules on ``text`` (ESCAPE first, so new ESCAPEs are not escaped twice)."""
    return text.replace(ESCAPE, ESCAPE + "2").replace(SPACE, ESCAPE + "1")


def unescape(text: str) -> str:
    """The denormaliser: the exact inverse of `escape`."""
    return text.replace(ESCAPE + "1", SPACE).replace(ESCAPE + "2", ESCAPE)


def whitespace_normalizer(texts: list[str]) -> list[str]:
    """What the normaliser of `trainer_options` models does, for models built without a proto:
    the escape rules, then spaces as "▁", no dummy prefix."""
    return [escape(t).replace(" ", SPACE) for t in texts]


def sp_normalizer(model_proto: bytes) -> Normalizer:
    """The normaliser of a serialized sentencepiece ModelProto (its C++ code, batched)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    return lambda texts: sp.normalize(list(texts)) if texts else []


def unit_mode(pieces: Sequence[str]) -> UnitMode:
    """The coarsest split every segmentation respects: before each "▁" if no piece holds "▁"
    after its first character; else after each run of newlines if no piece continues past one;
    else none (each text is one unit)."""
    if not any(SPACE in p[1:] for p in pieces):
        return "space"
    if not any(re.search(r"\n[^\n]", p) for p in pieces):
        return "lines"
    return "text"


def split_units(normalized: str, mode: UnitMode = "space") -> list[str]:
    """The units of one normalised text: sentencepiece's ``SplitIntoWords`` for ``space``."""
    if mode == "space":
        head, *rest = normalized.split(SPACE)
        return ([head] if head else []) + [SPACE + r for r in rest]
    if mode == "lines":
        return _LINES.findall(normalized)
    return [normalized] if normalized else []


@contextlib.contextmanager
def rule_files() -> Iterator[dict[str, Any]]:
    """sentencepiece trainer options for the normaliser above; the rule TSVs live in a
    temporary folder while the trainer reads them (sentencepiece takes file names only)."""

    def tsv(pairs: tuple[tuple[str, str], ...]) -> str:
        hexes = [" ".join(f"{ord(c):X}" for c in s) for s in (a for pair in pairs for a in pair)]
        return "".join(f"{hexes[2 * i]}\t{hexes[2 * i + 1]}\n" for i in range(len(pairs)))

    with tempfile.TemporaryDirectory(prefix="madapt-spm-") as folder:
        norm, denorm = Path(folder) / "normalize.tsv", Path(folder) / "denormalize.tsv"
        norm.write_text(tsv(ESCAPE_RULES), encoding="utf-8")
        denorm.write_text(tsv(tuple((b, a) for a, b in ESCAPE_RULES)), encoding="utf-8")
        yield {
            "normalization_rule_tsv": str(norm),
            "denormalization_rule_tsv": str(denorm),
            "add_dummy_prefix": False,
            "remove_extra_whitespaces": False,
        }
