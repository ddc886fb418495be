"""BytePiece (Table 5.1) against its documented algorithm: n-gram model, n-gram Viterbi, pruning,
and the sentencepiece form ADAT and the evaluation use."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import sentencepiece as spm

from madapt.data.text import read_texts
from madapt.tokenizers import bytepiece as bp
from madapt.tokenizers.evaluate import lossless_template

SETTINGS = bp.BytePieceSettings()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return read_texts("stdlib_docstrings")[0][:1200] + ["Grüße 世界 😀\n\nnext line\n", "a", "x 1234 y"]


@pytest.fixture(scope="module")
def parts(texts: list[str]) -> list[bytes]:
    return [c for t in texts for c in bp.chunks(t, SETTINGS)]


@pytest.fixture(scope="module")
def ngrams(parts: list[bytes]) -> bp.NgramModel:
    return bp.NgramModel(parts, SETTINGS)


def as_dict(ngrams: bp.NgramModel) -> dict[bytes, float]:
    return {
        int(c).to_bytes(8, "little")[:n]: float(lp)
        for n, (codes, logp) in enumerate(ngrams.tables, start=1)
        for c, lp in zip(codes, logp)
    }


def documented_viterbi(text: bytes, logp: dict[bytes, float], order: int) -> list[bytes]:
    """The n-gram segmentation as the BytePiece README/blog describe it, one chunk, plain loops:
    state j = bytes of the current piece before this one (the last state loops)."""
    n = len(text)
    node = [
        [logp.get(text[i - j : i + 1], -math.inf) if i >= j else -math.inf for j in range(order)]
        for i in range(n)
    ]
    for i in range(n):
        if 128 <= text[i] < 192:  # ensure_unicode: no piece starts on a continuation byte
            node[i][0] = -math.inf
    best, back = [node[0][:]], []
    for i in range(1, n):
        prev, row, ptr = best[-1], [], []
        for b in range(order):
            sources = range(order) if b == 0 else ([b - 1] if b < order - 1 else [order - 2, order - 1])
            a = max(sources, key=lambda s: (prev[s] + node[i][b], -s))  # first best on ties
            row.append(prev[a] + node[i][b])
            ptr.append(a)
        best.append(row)
        back.append(ptr)
    state = max(range(order), key=lambda s: (best[-1][s], -s))
    states = [state]
    for ptr in reversed(back):
        state = ptr[state]
        states.append(state)
    states.reverse()
    cuts = [i for i, s in enumerate(states) if s == 0] + [n]
    return [text[a:b] for a, b in itertools.pairwise(cuts)]


def test_chunks_are_lines_with_their_newlines() -> None:
    assert bp.chunks("ab\n\ncd\ne") == [b"ab\n\n", b"cd\n", b"e"]
    assert bp.chunks("x12 y", bp.BytePieceSettings(isolate_digits=True)) == [b"x", b"1", b"2", b" y"]
    assert bp.chunks("é") == ["é".encode()]


def test_ngram_model_is_conditional_log_counts(parts: list[bytes], ngrams: bp.NgramModel) -> None:
    counts = Counter(p[i : i + n] for p in parts for n in range(1, 7) for i in range(len(p) - n + 1))
    total = sum(len(p) for p in parts) + sum(1 for b in range(256) if bytes([b]) not in counts)
    logp = as_dict(ngrams)
    assert all(bytes([b]) in logp for b in range(256))  # every byte, seen or not
    assert logp[b"e"] == pytest.approx(math.log(counts[b"e"] / total))
    for gram in [b"th", b"the", b"the ", b"tion", b"ction"]:
        assert logp[gram] == pytest.approx(math.log(counts[gram] / counts[gram[:-1]]))
    rare = [g for g, c in counts.items() if len(g) > 1 and c < SETTINGS.min_count]
    assert rare and not any(g in logp for g in rare[:500])


def test_ngram_viterbi_equals_the_documented_algorithm(parts: list[bytes], ngrams: bp.NgramModel) -> None:
    logp = as_dict(ngrams)
    ours = bp.segment_texts(parts[:400], ngrams)
    assert ours == [documented_viterbi(p, logp, SETTINGS.order) for p in parts[:400]]
    assert Counter(x for seg in ours for x in seg) == bp.count_pieces(parts[:400], ngrams)


def test_trained_vocabulary_has_bytepieces_invariants(texts: list[str]) -> None:
    full = bp.train(texts)
    vocab = bp.cut(full, 1500)
    assert len(vocab) <= 1500 - 3 and all(bytes([b]) in vocab for b in range(256))
    multi = [k for k in vocab if len(k) > 1]
    assert all(len(k) <= SETTINGS.max_piece_length for k in multi)
    for k in multi:
        k.decode("utf-8")  # ensure_unicode: every multi-byte piece is whole characters
    # no wasted piece is left: splitting every piece by the vocabulary gives back the vocabulary
    assert set(bp.split_pieces(vocab, vocab.items())) == set(vocab)
    # pieces cross spaces (BytePiece does not split words), unlike sentencepiece's
    assert any(b" " in k.strip(b" ") for k in multi)


def test_sentencepiece_form_has_the_size_and_segments_like_bytepiece(texts: list[str]) -> None:
    template = lossless_template()
    proto = bp.bytepiece_model(texts[:1000], 1200, template)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert sp.get_piece_size() == 1200
    held = texts[1000:1100] + ["Grüße 世界 😀 \u2581 \ue000 x"]
    assert all(sp.decode(sp.encode(t)) == t for t in held)
    # on text every character of which is a piece, sentencepiece's Viterbi is BytePiece's
    full = bp.train(texts[:1000])
    pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    model_pieces = bp.cut(full, 1200 - 1 - sum(1 for p in pieces if len(p) == 1 and ord(p) < 128))
    ascii_docs = [t for t in held if t.isascii() and "\u2581" not in t][:40]
    ours = bp.split_pieces(model_pieces, [(t.encode(), 1) for t in ascii_docs])
    theirs = Counter(
        p.replace("\u2581", " ").encode() for t in ascii_docs for p in sp.encode(t, out_type=str)
    )
    agree = sum(min(ours[k], theirs[k]) for k in theirs) / sum(theirs.values())
    assert agree > 0.97


def test_adat_starts_from_a_bytepiece_vocabulary(tmp_path) -> None:
    from madapt.runs import RunFolder
    from madapt.tokenizers import adat

    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(read_texts("stdlib_docstrings")[0][:400]) + "\n", encoding="utf-8")
    cfg = adat.AdatConfig.model_validate(
        {
            "kind": "adat",
            "corpus": str(corpus),
            "initial": "bytepiece",
            "initial_vocab": 800,
            "target_vocab": 650,
            "rounds": 1,
            "round_train_tokens": 300,
            "lm": {"seq_len": 16, "batch_size": 4, "eval_batch_size": 16},
            "evaluate": {"enabled": False},
        }
    )
    data = adat.prepare(cfg)
    initial = list(bp.read_model_proto(data.initial_proto).pieces)
    assert len(initial) == 800 and any("▁" in p.piece[1:] for p in initial)  # BytePiece's cross-word pieces
    proto, history = adat.run_rounds(cfg, cfg.variants[0], data, RunFolder(tmp_path / "r").checkpoints)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert sp.get_piece_size() == 650 and history[0]["pruned"] == 150
    assert all(sp.decode(sp.encode(t)) == t for t in data.corpus.texts("eval"))
    assert np.isfinite(history[0]["lm_heldout_loss"])
