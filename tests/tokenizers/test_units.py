"""Units as sentencepiece sees them: its normaliser and its word split (spaces only), and the
lossless U+2581 escape of the models madapt trains."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from madapt.data.text import read_texts
from madapt.tokenizers.evaluate import train_unigram
from madapt.tokenizers.unigram import UnigramModel, viterbi, word_counts
from madapt.tokenizers.units import (
    SPACE,
    escape,
    sp_normalizer,
    split_units,
    unescape,
    unit_mode,
    whitespace_normalizer,
)

ODD = [
    "tab\there",
    "line one\nline two",
    "no\u00a0break space",
    "  two leading",
    "trailing  ",
    "\n\n",
    "a\u2581b",
    "private \ue000 use",
    "\ue0001\ue0002",
    "mixed \t\n\u00a0 \u3000 x",
]


@pytest.fixture(scope="module")
def proto() -> bytes:
    texts = read_texts("stdlib_docstrings")[0][:400]
    return train_unigram([*texts, *ODD * 20], 700)


def test_our_normaliser_is_the_trained_models(proto: bytes) -> None:
    normalize = sp_normalizer(proto)
    assert normalize(ODD) == whitespace_normalizer(ODD)
    assert normalize(["a b"]) == ["a▁b"]  # no dummy prefix, spaces escaped


def test_word_split_equals_sentencepieces_on_tabs_newlines_and_nbsp(proto: bytes) -> None:
    """Every piece sentencepiece emits lies inside one unit, and the units' Viterbi paths are its
    segmentation: the split is the one its lattice respects (a cut before "▁" only, so tabs,
    newlines and non-breaking spaces stay inside words; `str.split` would cut at all of them)."""
    sp, model = spm.SentencePieceProcessor(model_proto=proto), UnigramModel.from_sentencepiece(proto)
    normalize = sp_normalizer(proto)
    for text in ODD:
        units = split_units(normalize([text])[0])
        assert "".join(units) == normalize([text])[0]
        assert all(SPACE not in u[1:] for u in units)
        pieces = sp.encode(text, out_type=str)
        ours = [p for path in viterbi(model, units) for p in path]
        joined = "".join(ours)
        assert joined == "".join(units)
        if not any(sp.is_byte(i) for i in sp.encode(text)):  # no unknown characters
            assert ours == pieces, text
    words = word_counts(ODD, normalize).words
    assert "tab\there" in words and "line▁two" not in words and "▁two" in words
    assert "no\u00a0break" in words and "▁one\nline" in words
    assert "\n\n" in words and "▁\t\n\u00a0" in words  # whitespace other than the space stays put


CHARS = st.characters(blacklist_categories=("Cs",))


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.one_of(st.sampled_from(["\u2581", "\ue000", "1", "2", " "]), CHARS), max_size=30))
def test_escape_is_exactly_inverted(text: str) -> None:
    assert unescape(escape(text)) == text
    assert SPACE not in escape(text)


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(
        st.one_of(st.sampled_from(["\u2581", "\ue000", "1", "2", " ", "\n", "\t"]), CHARS), max_size=40
    )
)
def test_sentencepiece_round_trip_includes_u2581(proto: bytes, text: str) -> None:
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert sp.decode(sp.encode(text)) == text


def test_unit_mode_follows_the_vocabulary() -> None:
    assert unit_mode(["a", "▁b", "cd"]) == "space"
    assert unit_mode(["a", "b▁c", "x\n\n"]) == "lines"
    assert unit_mode(["a", "b▁c", "x\ny"]) == "text"
    assert split_units("a▁b\n\nc", "lines") == ["a▁b\n\n", "c"]
    assert split_units("", "space") == [] and split_units("▁▁x") == ["▁", "▁x"]
    corpus = word_counts(["a b a", "a"])
    assert corpus.words == ["a", "▁a", "▁b"]
    np.testing.assert_array_equal(corpus.counts, [2.0, 1.0, 1.0])
