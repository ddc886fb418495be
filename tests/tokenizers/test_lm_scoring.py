"""LM-loss glue of ADAT (eq. 5.3, §5.3.2.1): packing, sampled segmentation, per-piece accumulation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import sentencepiece as spm
import torch

from madapt.backbones.causal_lm import build_causal_lm
from madapt.data.text import read_texts
from madapt.tokenizers.corpus import CyclicReader
from madapt.tokenizers.evaluate import train_unigram
from madapt.tokenizers.evidence import EvidenceSearch
from madapt.tokenizers.lm_scoring import (
    LMSettings,
    accumulate_loss,
    pack,
    piece_lm_loss,
    sp_encoder,
    stream,
    take_tokens,
    train_lm,
)
from madapt.tokenizers.sampling import SegmentationSampler, calibrate_alpha, length_ratio

SEP = 2


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return read_texts("stdlib_docstrings")[0][:400]


@pytest.fixture(scope="module")
def proto(corpus: list[str]) -> bytes:
    return train_unigram(corpus, 600)


def test_pack_scores_every_stream_token_once() -> None:
    ids = list(range(3, 3 + 23))
    blocks = pack(ids, seq_len=6, sep_id=SEP)
    assert blocks.ids.shape == (5, 6)  # 23 tokens / 5 per block -> 5 blocks, the last partial
    assert (blocks.ids[:, 0] == SEP).all()
    targets = blocks.ids[:, 1:][blocks.mask[:, 1:] & blocks.mask[:, :-1]]
    assert targets.tolist() == ids
    assert blocks.n_predicted == len(ids)
    assert len(pack(ids, 6, SEP, keep_partial=False).ids) == 4


def test_accumulated_loss_equals_manual_loop() -> None:
    torch.manual_seed(0)
    model = build_causal_lm("pythia-micro", 40, seed=3).eval()
    sentences = [[5, 9, 11, 30], [7, 7, 7], [12, 39, 4, 5, 9, 21, 8]]
    ids = [t for s in sentences for t in (*s, SEP)]
    blocks = pack(ids, seq_len=5, sep_id=SEP)
    acc = accumulate_loss(model, blocks, vocab_size=40, batch_size=2)

    total, count = np.zeros(40), np.zeros(40, dtype=int)
    with torch.no_grad():
        for row, mask in zip(blocks.ids, blocks.mask):
            for t in range(1, int(mask.sum())):
                logits = model(input_ids=row[:t].unsqueeze(0)).logits[0, -1]  # prefix only: causal
                total[row[t]] += float(-torch.log_softmax(logits.double(), -1)[row[t]])
                count[row[t]] += 1
    assert count.sum() == len(ids)
    np.testing.assert_array_equal(acc.count.numpy(), count)
    np.testing.assert_allclose(acc.total.numpy(), total, rtol=1e-4, atol=1e-5)


def test_sampled_segmentations_differ_but_decode_to_the_text(proto: bytes, corpus: list[str]) -> None:
    sp = spm.SentencePieceProcessor(model_proto=proto)
    spm.set_random_generator_seed(1)
    text = corpus[0]
    draws = [tuple(sp_encoder(sp, sample=True, alpha=0.1)([text])[0]) for _ in range(8)]
    assert len(set(draws)) > 1
    assert all(sp.decode(list(d)) == text for d in draws)
    viterbi = sp_encoder(sp)([text] * 3)
    assert viterbi[0] == viterbi[1] == viterbi[2] == sp.encode(text)
    # one batch call re-samples every copy of a repeated text; a seed reproduces the draws (in-process)
    spm.set_random_generator_seed(5)
    batch = sp_encoder(sp, sample=True)([text] * 6)
    spm.set_random_generator_seed(5)
    assert len({tuple(b) for b in batch}) > 1 and sp_encoder(sp, sample=True)([text] * 6) == batch


def test_take_tokens_cycles_to_the_requested_length(proto: bytes, corpus: list[str]) -> None:
    sp = spm.SentencePieceProcessor(model_proto=proto)

    def viterbi(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pieces = sp.encode(texts)
        return np.array([i for p in pieces for i in p], dtype=np.int64), np.array([len(p) for p in pieces])

    ids, used = take_tokens(CyclicReader.over(corpus[:3]), viterbi, SEP, n_tokens=1000, first_chunk=2)
    assert len(ids) == 1000
    one_pass = stream(sp_encoder(sp), corpus[:3], SEP)
    assert ids[: len(one_pass)].tolist() == one_pass  # Viterbi: passes repeat exactly
    assert ids[len(one_pass) : 2 * len(one_pass)].tolist() == one_pass
    lengths, total, expected_used = [len(sp.encode(t)) + 1 for t in corpus[:3]], 0, 0
    while total < 1000:  # whole documents until the budget is met, the last one cut short
        total, expected_used = total + lengths[expected_used % 3], expected_used + 1
    assert used == expected_used


def test_training_lowers_the_loss() -> None:
    blocks = pack([3, 4, 5, 6, 7, 8] * 60, seq_len=16, sep_id=SEP, keep_partial=False)
    model = build_causal_lm("pythia-micro", 12, seed=0)
    losses = train_lm(model, blocks, steps=30, settings=LMSettings(batch_size=4, lr=3e-3), seed=0)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])


def test_piece_lm_loss_counts_the_viterbi_occurrences(proto: bytes, corpus: list[str]) -> None:
    settings = LMSettings(seq_len=32, batch_size=4)
    score = corpus[300:320]
    lm = piece_lm_loss(proto, corpus[:300], score, train_tokens=400, settings=settings, seed=0)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    expected = Counter(stream(sp_encoder(sp), score, sp.eos_id()))
    assert len(lm.losses) == 4  # ceil(400 / (4 * 31))
    counts = lm.acc.count.numpy()
    assert {i: int(c) for i, c in enumerate(counts) if c} == dict(expected)
    assert (lm.acc.total.numpy()[counts > 0] > 0).all() and (lm.acc.total.numpy()[counts == 0] == 0).all()
    assert lm.alpha == 0.1 and lm.calibration_ratio is None and lm.length_ratio > 1
    # same seed -> same model and loss (the resume guarantee rests on this)
    again = piece_lm_loss(proto, corpus[:300], score, train_tokens=400, settings=settings, seed=0)
    torch.testing.assert_close(lm.acc.total, again.acc.total)


def test_auto_alpha_keeps_the_sampled_length_within_the_bound(proto: bytes, corpus: list[str]) -> None:
    # alpha = 0.1 over-segments far beyond 1.2x; the calibrated alpha stays under the bound on the
    # round's text and on text it was not calibrated on.
    sp = spm.SentencePieceProcessor(model_proto=proto)
    sampler = SegmentationSampler.from_proto(proto, 0.1)
    viterbi = np.array([len(ids) for ids in sp.encode(corpus[200:400])])
    assert length_ratio(sampler, viterbi, corpus[200:400], np.random.default_rng(0)) > 1.3
    alpha, ratio = calibrate_alpha(proto, corpus[:150], 1.2, seed=0)
    assert 0.1 < alpha < 4 and ratio <= 1.15
    fresh = SegmentationSampler.from_proto(proto, alpha)
    assert length_ratio(fresh, viterbi, corpus[200:400], np.random.default_rng(5)) <= 1.2
    # ... and a smaller alpha would have broken it (the smallest alpha under the bound is chosen)
    looser = SegmentationSampler.from_proto(proto, alpha / 1.6)
    assert length_ratio(looser, viterbi, corpus[200:400], np.random.default_rng(5)) > 1.15
    lm = piece_lm_loss(
        proto,
        corpus[:300],
        corpus[300:320],
        train_tokens=2000,
        settings=LMSettings(seq_len=32, batch_size=4),
        seed=0,
        alpha=None,
        calibration_docs=100,
    )
    assert lm.calibration_ratio is not None and lm.calibration_ratio <= 1.15 and lm.length_ratio <= 1.2


def test_pieces_absent_from_the_slice_are_scored_on_unseen_training_text(
    proto: bytes, corpus: list[str]
) -> None:
    sp = spm.SentencePieceProcessor(model_proto=proto)
    train, score = corpus[:300], corpus[300:310]
    in_slice = np.zeros(sp.get_piece_size(), bool)
    in_slice[[i for ids in sp.encode(score) for i in ids]] = True
    wanted = np.zeros(sp.get_piece_size(), bool)
    wanted[sp.get_piece_size() // 2 :] = True  # some in the slice, most not
    reader = CyclicReader.over(train)
    lm = piece_lm_loss(
        proto,
        reader,
        score,
        train_tokens=600,
        settings=LMSettings(seq_len=32, batch_size=4),
        seed=0,
        evidence=EvidenceSearch(len(train), token_fraction=50.0, wanted=wanted),
    )
    first_unseen = reader.position  # the round trained on train[:first_unseen]
    assert 0 < first_unseen < 100 and lm.evidence is not None and lm.evidence_docs > 0
    got = lm.evidence.count.numpy() > 0
    missing = wanted & ~in_slice
    unseen = np.zeros_like(got)
    unseen[[i for ids in sp.encode(train[first_unseen:]) for i in ids] + [sp.eos_id()]] = True
    # every missing piece that unseen text holds got evidence, and only unseen text was scored:
    # no evidence for a piece that occurs only in the documents the LM trained on
    assert missing.sum() > 20 and ((missing & unseen) <= got).all()
    assert not (got & ~unseen).any()
