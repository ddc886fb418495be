"""Seeded FFBS segmentation sampling (seed 000 §5.3.2.1): exact distribution, Viterbi limit,
determinism, lossless round trip, and a cross-process resume of the ADAT recipe that reproduces
an uninterrupted run's vocabulary."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from madapt.data.text import read_texts
from madapt.runs import RunFolder
from madapt.tokenizers.evaluate import train_unigram
from madapt.tokenizers.sampling import SegmentationSampler
from madapt.tokenizers.unigram import CONTROL, NORMAL, UNK_PENALTY, UNKNOWN, UnigramModel, viterbi

PIECES = [
    "<unk>",
    "<s>",
    "▁",
    "a",
    "b",
    "c",
    "ab",
    "bc",
    "ca",
    "abc",
    "▁a",
    "▁ab",
    "▁c",
    "bca",
    "cab",
    "▁abc",
]
SRC = Path(__file__).resolve().parents[2] / "src"


def tiny_model(seed: int = 0) -> UnigramModel:
    rng = np.random.default_rng(seed)
    scores = np.log(rng.dirichlet(np.ones(len(PIECES))))
    scores[:2] = 0.0
    return UnigramModel(PIECES, scores, [UNKNOWN, CONTROL] + [NORMAL] * (len(PIECES) - 2))


def segmentations(word: str, model: UnigramModel) -> dict[tuple[str, ...], float]:
    """Every segmentation of ``word`` with its score Σ log p (sentencepiece's unknown rule)."""
    vocab = {p: s for p, s, m in zip(model.pieces, model.scores, model.matchable) if m}
    unk = min(vocab.values()) - UNK_PENALTY
    out: dict[tuple[str, ...], float] = {}

    def walk(i: int, pieces: tuple[str, ...], score: float) -> None:
        if i == len(word):
            out[pieces] = score
            return
        for j in range(i + 1, len(word) + 1):
            if word[i:j] in vocab:
                walk(j, (*pieces, word[i:j]), score + vocab[word[i:j]])
        if word[i] not in vocab:
            walk(i + 1, (*pieces, word[i]), score + unk)

    walk(0, (), 0.0)
    return out


def exact_probabilities(word: str, model: UnigramModel, alpha: float) -> dict[tuple[str, ...], float]:
    segs = segmentations(word, model)
    logits = alpha * np.array(list(segs.values()))
    probs = np.exp(logits - np.logaddexp.reduce(logits))
    return dict(zip(segs, probs))


def chi_square_pvalue(observed: Counter, expected_probs: dict[tuple[str, ...], float]) -> float:
    """Pearson chi-square of ``observed`` against ``expected_probs``; cells with an expected count
    below 5 are pooled (and a sample outside the support makes the test fail outright)."""
    assert set(observed) <= set(expected_probs), set(observed) - set(expected_probs)
    n = sum(observed.values())
    keys = sorted(expected_probs, key=expected_probs.get, reverse=True)
    big = [k for k in keys if expected_probs[k] * n >= 5]
    small = [k for k in keys if expected_probs[k] * n < 5]
    obs = [observed[k] for k in big] + ([sum(observed[k] for k in small)] if small else [])
    exp = [expected_probs[k] * n for k in big] + (
        [sum(expected_probs[k] for k in small) * n] if small else []
    )
    return float(chisquare(obs, np.array(exp) * n / sum(exp)).pvalue)


def as_pieces(model: UnigramModel, word: str, ids: list[int]) -> tuple[str, ...]:
    """Piece strings of a sampled unit; an <unk> id stands for the character it covers."""
    out, pos = [], 0
    for i in ids:
        piece = word[pos] if i == model.unk_id else model.pieces[i]
        out.append(piece)
        pos += len(piece)
    return tuple(out)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return read_texts("stdlib_docstrings")[0][:1000]


@pytest.fixture(scope="module")
def proto(corpus: list[str]) -> bytes:
    return train_unigram(corpus[:400], 600)


@pytest.mark.parametrize("alpha", [0.1, 1.0])
@pytest.mark.parametrize("text", [" abcab", " bcabxcab"])  # x: an unknown character
def test_sample_frequencies_match_exact_segmentation_probabilities(text: str, alpha: float) -> None:
    model = tiny_model()
    sampler = SegmentationSampler(model, alpha)
    word = text.replace(" ", "▁")  # no dummy prefix: the space itself is the "▁"
    n = 20_000
    draws = Counter(
        as_pieces(model, word, ids) for ids in sampler.sample([text] * n, np.random.default_rng(0))
    )
    exact = exact_probabilities(word, model, alpha)
    assert len(exact) >= 7 and len(draws) >= 7
    assert chi_square_pvalue(draws, exact) > 1e-3
    # The test has power: the same draws reject the distribution of a different alpha.
    assert chi_square_pvalue(draws, exact_probabilities(word, model, 1.6 * alpha)) < 1e-6
    # Max abs difference within 5 standard errors of a frequency over n draws.
    worst = max(abs(draws[k] / n - p) for k, p in exact.items())
    assert worst < 5 * np.sqrt(0.25 / n)


def test_sentencepiece_sampler_draws_from_the_same_distribution(proto: bytes) -> None:
    """Our target is sentencepiece's ``nbest_size=-1`` distribution: check both samplers against
    the enumerated probabilities of one real word (byte fallback: 'Ж' is not in the vocabulary)."""
    model = UnigramModel.from_sentencepiece(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    text, alpha, n = "retЖurns", 0.3, 10_000
    word = text
    exact = exact_probabilities(word, model, alpha)
    spm.set_random_generator_seed(3)
    ours = SegmentationSampler.from_proto(proto, alpha).sample([text] * n, np.random.default_rng(3))
    theirs = [sp.encode(text, enable_sampling=True, alpha=alpha, nbest_size=-1) for _ in range(n)]
    for draws in (ours, theirs):
        assert "<0xD0>" in [sp.id_to_piece(i) for i in draws[0]]  # the unknown char as UTF-8 bytes
        assert chi_square_pvalue(Counter(lattice_pieces(sp, d) for d in draws), exact) > 1e-3


def lattice_pieces(sp: spm.SentencePieceProcessor, ids: list[int]) -> tuple[str, ...]:
    """Piece strings of a segmentation, the byte pieces of an unknown character joined back into
    that character (one unknown edge of the lattice)."""
    out, pending = [], b""
    for i in ids:
        if not sp.is_byte(i):
            out.append(sp.id_to_piece(i))
            continue
        pending += bytes([int(sp.id_to_piece(i)[3:5], 16)])
        try:
            out.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:  # a multi-byte character is not complete yet
            pass
    return tuple(out)


def test_large_alpha_gives_the_viterbi_segmentation(proto: bytes, corpus: list[str]) -> None:
    model = tiny_model(1)
    words = ["abcab", "bcabca", "cabxab", "aaa"]
    sampled = SegmentationSampler(model, alpha=1e4).sample(words, np.random.default_rng(0))
    assert [as_pieces(model, w, s) for w, s in zip(words, sampled)] == [
        tuple(p) for p in viterbi(model, words)
    ]
    # ... and sentencepiece's own Viterbi ids on real text, byte fallback included.
    sp = spm.SentencePieceProcessor(model_proto=proto)
    texts = corpus[400:700] + ["Жx中  two\tspaces ", " ", "a\u2581b\ue000 \n\u00a0"]
    sampler = SegmentationSampler.from_proto(proto, alpha=1e4)
    assert sampler.sample(texts, np.random.default_rng(1)) == [sp.encode(t) for t in texts]


def test_same_seed_same_ids_other_seed_other_ids(proto: bytes, corpus: list[str]) -> None:
    texts = corpus[:50]

    def draw(seed: int, warm: bool = False) -> list[list[int]]:
        sampler = SegmentationSampler.from_proto(proto, alpha=0.1)
        if warm:  # a cache filled by other texts must not change the draws
            sampler.sample(corpus[500:600], np.random.default_rng(99))
        return sampler.sample(texts, np.random.default_rng(seed))

    first = draw(7)
    assert draw(7) == first and draw(7, warm=True) == first
    assert draw(8) != first
    # successive calls on one generator give new segmentations of the same texts
    sampler, rng = SegmentationSampler.from_proto(proto, alpha=0.1), np.random.default_rng(7)
    assert sampler.sample(texts, rng) == first and sampler.sample(texts, rng) != first


def test_unit_cache_and_without_byte_fallback_runs_of_unknowns_merge() -> None:
    model = tiny_model()
    sampler = SegmentationSampler(model, alpha=0.5)
    out = sampler.sample(["ab xyab", "", "ab ab"], np.random.default_rng(0))
    assert out[1] == [] and sampler.n_cached_units == 3  # "ab", "▁xyab" and "▁ab"
    unk = model.unk_id
    assert out[0].count(unk) == 1  # "xy": two unknown characters, one <unk> (sentencepiece's rule)
    assert [i for i in out[0] if i != unk] and unk not in out[2]


def test_without_byte_fallback_unknown_runs_match_sentencepiece(corpus: list[str]) -> None:
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus[:400]),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=400,
        character_coverage=0.99,
        minloglevel=2,
    )
    proto = buffer.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    sampler = SegmentationSampler.from_proto(proto, alpha=1e4)
    assert not sampler.byte_fallback
    texts = ["ЖЖ x中", "a  b ЖxЖ", *corpus[400:450]]
    assert sampler.sample(texts, np.random.default_rng(0)) == [sp.encode(t) for t in texts]


def test_a_piece_with_an_inner_space_disables_unit_splitting() -> None:
    pieces = [*PIECES, "a▁b"]
    model = UnigramModel(
        pieces,
        np.log(np.full(len(pieces), 1 / len(pieces))),
        [UNKNOWN, CONTROL] + [NORMAL] * (len(pieces) - 2),
    )
    sampler = SegmentationSampler(model, alpha=100.0)
    assert sampler.unit_mode == "lines"
    ids = sampler.sample(["ca b"], np.random.default_rng(0))[0]
    assert [model.pieces[i] for i in ids] == ["c", "a▁b"]  # fewest pieces at equal scores


@pytest.fixture(scope="module")
def sampler(proto: bytes) -> SegmentationSampler:
    return SegmentationSampler.from_proto(proto, alpha=0.1)


# Mostly the corpus's own characters (so pieces match), plus any character (bytes, unknowns).
TEXT = st.text(
    st.one_of(st.sampled_from(list("etaoinsrhdlcu_.,() \t\n")), st.characters(blacklist_categories=("Cs",))),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(text=TEXT, seed=st.integers(0, 2**32))
def test_decode_of_a_sample_is_the_text(
    sampler: SegmentationSampler, proto: bytes, text: str, seed: int
) -> None:
    sp = spm.SentencePieceProcessor(model_proto=proto)
    ids = sampler.sample([text], np.random.default_rng(seed))[0]
    assert sp.decode(ids) == text  # identity normalisation + byte fallback: lossless


def _driver(tmp: Path) -> Path:
    """A `madapt run` whose process is SIGKILLed right after round 1's checkpoint is written."""
    script = tmp / "killed_run.py"
    script.write_text(
        "import os, signal, sys\n"
        "from madapt import runs\n"
        "original = runs.Checkpointer.save\n"
        "def save(self, unit, state):\n"
        "    path = original(self, unit, state)\n"
        "    if dict(unit) == {'round': 1}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return path\n"
        "runs.Checkpointer.save = save\n"
        "from madapt.cli import main\n"
        "sys.argv = ['madapt', *sys.argv[1:]]\n"
        "main()\n",
        encoding="utf-8",
    )
    return script


@pytest.mark.slow
def test_resume_in_a_new_process_reproduces_the_uninterrupted_vocabulary(
    corpus: list[str], tmp_path: Path
) -> None:
    corpus_file = tmp_path / "docs.txt"
    corpus_file.write_text("\n".join(corpus[:400]) + "\n", encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kind": "adat",
                "corpus": str(corpus_file),
                "initial_vocab": 700,
                "target_vocab": 500,
                "rounds": 2,
                "round_train_tokens": 600,
                "lm": {"seq_len": 16, "batch_size": 4, "eval_batch_size": 16},
                "evaluate": {"enabled": False},
            }
        ),
        encoding="utf-8",
    )

    def madapt(out: Path, *extra: str, hash_seed: str, driver: Path | None = None):
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": hash_seed}
        entry = [str(driver)] if driver else ["-m", "madapt.cli"]
        return subprocess.run(
            [sys.executable, *entry, "run", str(config), "--out", str(out), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    # Different string-hash seeds per process: nothing may depend on set/dict hash order.
    straight = madapt(tmp_path / "straight", hash_seed="1")
    assert straight.returncode == 0, straight.stderr
    killed = madapt(tmp_path / "resumed", hash_seed="2", driver=_driver(tmp_path))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert RunFolder(tmp_path / "resumed" / "adat").checkpoints.load().unit == {"round": 1}
    resumed = madapt(tmp_path / "resumed", "--resume", hash_seed="3")
    assert resumed.returncode == 0, resumed.stderr
    assert "adat round 2" in resumed.stdout and "adat round 1" not in resumed.stdout

    a = UnigramModel.from_sentencepiece(tmp_path / "straight" / "adat" / "tokenizer.model")
    b = UnigramModel.from_sentencepiece(tmp_path / "resumed" / "adat" / "tokenizer.model")
    assert len(a.pieces) == 500
    assert a.pieces == b.pieces
    np.testing.assert_array_equal(a.scores, b.scores)
    # Stronger than the vocabulary (which a barely trained LM rarely changes): every round's LM
    # losses and score statistics are bit-identical, so the sampled training streams were too.
    # (With sentencepiece's sampler these differ between processes.)

    def rounds(run: str) -> list[dict]:
        results = json.loads((tmp_path / run / "results.json").read_text(encoding="utf-8"))
        return [
            {k: v for k, v in r.items() if "seconds" not in k} for r in results["variants"]["adat"]["rounds"]
        ]

    assert rounds("straight") == rounds("resumed")


@pytest.fixture(scope="module")
def viterbi_sampler(proto: bytes) -> SegmentationSampler:
    return SegmentationSampler.from_proto(proto, alpha=1e4)


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_viterbi_limit_matches_sentencepiece_on_any_text(
    viterbi_sampler: SegmentationSampler, proto: bytes, text: str
) -> None:
    """Normalisation, unit splitting and byte fallback agree with sentencepiece's encoder."""
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert viterbi_sampler.sample([text], np.random.default_rng(0))[0] == sp.encode(text)
