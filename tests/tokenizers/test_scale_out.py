"""ADAT at scale (issue 5 item 7): the streamed corpus, held-out slices, wrapping rounds, batch
shards, and a tiny run under two processes that matches the single-process run."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from launch_helpers import madapt_run
from madapt.data.text import read_texts
from madapt.tokenizers.corpus import PARTS, CorpusStream, CyclicReader, HeldOut, reservoir_sample
from madapt.tokenizers.lm_scoring import batch_rows, iter_blocks, pack, take_tokens
from madapt.tokenizers.unigram import UnigramModel
from madapt.training import Processes

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize("fractions", [(0.1, 0.1), (0.01, 0.05), (0.3, 0.2)])
def test_held_out_slices_are_disjoint_spread_and_seeded(fractions: tuple[float, float]) -> None:
    e, s = fractions
    n = 5000
    parts = np.array([HeldOut.seeded(e, s, seed=3).part(i) for i in range(n)])
    assert set(parts) <= set(PARTS)  # one part per document: the slices are disjoint by construction
    for part, frac in (("eval", e), ("score", s), ("train", 1 - e - s)):
        share = np.cumsum(parts == part)
        # every prefix holds its share within two documents: spread evenly, not clumped
        assert np.abs(share - frac * np.arange(1, n + 1)).max() <= 2, part
    again = [HeldOut.seeded(e, s, seed=3).part(i) for i in range(n)]
    other = [HeldOut.seeded(e, s, seed=4).part(i) for i in range(n)]
    assert again == parts.tolist() and other != parts.tolist()


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return read_texts("stdlib_docstrings")[0][:300]


@pytest.mark.parametrize("kind", ["txt", "jsonl.gz"])
def test_streamed_corpus_reads_what_read_texts_reads(tmp_path: Path, docs: list[str], kind: str) -> None:
    lines = []
    for i, text in enumerate(docs):
        lines.append(text if kind == "txt" else json.dumps({"text": text}))
        if i % 50 == 7:  # bad lines are skipped by both readers alike
            lines.append("" if kind == "txt" else '{"no_text": 1}')
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path = tmp_path / f"corpus.{kind}"
    path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
    for cap in (None, 20_000):
        whole, stats = read_texts(str(path), cap)
        corpus = CorpusStream(str(path), cap, HeldOut.seeded(0.1, 0.1, seed=0))
        assert list(corpus.documents()) == whole
        counts = corpus.count()
        assert counts.stats.kept == stats.kept and counts.stats.skipped == stats.skipped
        by_part = {part: list(corpus.texts(part)) for part in PARTS}
        assert sum(len(v) for v in by_part.values()) == len(whole)
        assert {part: len(v) for part, v in by_part.items()} == counts.docs
        # merging the parts back by file position gives the file: disjoint, in order, nothing lost
        parts = [corpus.held_out.part(i) for i in range(len(whole))]
        cursors = dict.fromkeys(PARTS, 0)
        merged = []
        for part in parts:
            merged.append(by_part[part][cursors[part]])
            cursors[part] += 1
        assert merged == whole


def _doc_encoder(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Document ``"d7 x x x"`` -> ids [7, 7, 7, 7]: the stream shows which document each token is from."""
    ids = [np.full(len(t.split()), int(t.split()[0][1:]), np.int64) for t in texts]
    return np.concatenate(ids), np.array([len(i) for i in ids])


def test_rounds_advance_through_the_training_text_and_wrap() -> None:
    texts = [f"d{i}" + " x" * (i % 4) for i in range(11)]  # 1..4 tokens + separator per document
    reader = CyclicReader.over(texts)
    budget, seen, firsts = 9, [], []
    for _ in range(10):  # 90 tokens: more than two passes over the 37-token training text
        firsts.append(reader.position)
        ids, used = take_tokens(reader, _doc_encoder, -1, budget, first_chunk=2)
        assert len(ids) == budget
        docs = [int(i) for k, i in enumerate(ids) if i >= 0 and (k == 0 or ids[k - 1] != i)]
        assert len(docs) == used and docs[0] == firsts[-1]
        assert reader.position == (firsts[-1] + used) % len(texts)  # the next round starts after this one
        seen.extend(docs)
    assert seen == [k % len(texts) for k in range(len(seen))]  # in file order, wrapping around
    assert len(seen) > 2 * len(texts)
    # a new reader at a saved cursor (a resumed run) reads the same round
    again = CyclicReader.over(texts, start=firsts[5])
    expected = take_tokens(CyclicReader.over(texts, start=firsts[5]), _doc_encoder, -1, budget)[0]
    assert np.array_equal(take_tokens(again, _doc_encoder, -1, budget)[0], expected)


def test_training_cursor_of_a_corpus_counts_training_documents_only(tmp_path: Path, docs: list[str]) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    corpus = CorpusStream(str(path), None, HeldOut.seeded(0.1, 0.1, seed=1))
    train = list(corpus.texts("train"))
    reader = corpus.train_reader(start=len(train) - 2)
    assert reader.peek(4) == train[-2:] + train[:2]
    reader.advance(3)
    assert reader.position == 1 and reader.consumed == 3
    with pytest.raises(ValueError, match="past the end"):
        corpus.train_reader(start=len(train) + 5).peek(1)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_batch_shards_tile_every_global_batch(world: int) -> None:
    batches = list(batch_rows(n_blocks=10, batch_size=6, steps=5, seed=2))
    first_epoch = torch.cat(batches)[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))  # epochs of seeded permutations
    assert all(torch.equal(a, b) for a, b in zip(batches, batch_rows(10, 6, 5, seed=2)))
    for take in batches:
        shards = [take[Processes(r, world).shard(len(take))] for r in range(world)]
        assert torch.equal(torch.cat(shards), take)


@pytest.mark.parametrize("keep_partial", [True, False])
def test_streamed_blocks_stack_to_the_packed_stream(keep_partial: bool) -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.integers(3, 50, size=n) for n in (0, 4, 13, 1, 30, 7)]
    whole = pack(np.concatenate(chunks), 6, 2, keep_partial)
    groups = list(iter_blocks(iter(chunks), 6, 2, keep_partial))
    assert torch.equal(torch.cat([g.ids for g in groups]), whole.ids)
    assert torch.equal(torch.cat([g.mask for g in groups]), whole.mask)


def test_reservoir_sample_is_seeded_bounded_and_in_order() -> None:
    texts = [f"doc {i}" for i in range(1000)]
    a = reservoir_sample(iter(texts), 50, seed=0)
    assert len(a) == 50 and len(set(a)) == 50 and set(a) <= set(texts)
    assert a == sorted(a, key=texts.index)  # source order
    assert a == reservoir_sample(texts, 50, seed=0) and a != reservoir_sample(texts, 50, seed=1)
    assert reservoir_sample(texts[:30], 50, seed=0) == texts[:30]
    # roughly uniform: the late half of the source is not under-represented
    late = np.mean([sum(int(t.split()[1]) >= 500 for t in reservoir_sample(texts, 50, s)) for s in range(40)])
    assert 20 < late < 30


# ---------------------------------------------------------------------------------------------
# Two processes under accelerate launch


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_processes_match_the_single_process_run(tmp_path: Path, docs: list[str]) -> None:
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(docs + read_texts("stdlib_docstrings")[0][300:400]) + "\n", encoding="utf-8")
    # the tiny config of test_adat.py, with a small evaluation so evaluate.py is covered too
    (tmp_path / "cfg.yaml").write_text(
        f"kind: adat\ncorpus: {corpus}\ninitial_vocab: 700\ntarget_vocab: 500\nrounds: 2\n"
        "round_train_tokens: 600\nlm: {seq_len: 16, batch_size: 4, eval_batch_size: 16}\n"
        "evaluate: {epochs: 1, train_bytes: 10000}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for n, out in ((1, "one"), (2, "two")):
        proc = subprocess.run(
            madapt_run(n, out),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    # same final vocabulary, piece for piece
    final = [
        UnigramModel.from_sentencepiece(tmp_path / d / "adat" / "tokenizer.model").pieces
        for d in ("one", "two")
    ]
    assert final[0] == final[1] and len(final[0]) == 500
    for r1, r2 in zip(one["variants"]["adat"]["rounds"], two["variants"]["adat"]["rounds"], strict=True):
        for key in ("size_after", "lowest_pruned", "unseen_in_scoring", "train_first_doc", "train_docs"):
            assert r1[key] == r2[key], key
        for key in ("lm_train_loss", "lm_heldout_loss"):  # up to float summation order
            assert r2[key] == pytest.approx(r1[key], rel=1e-6), key
    first, second = one["variants"]["adat"]["rounds"]
    assert second["train_first_doc"] == first["train_first_doc"] + first["train_docs"]  # round 2 reads on
    for name in ("adat", "unigram", "bpe"):
        e1, e2 = one["evaluation"][name], two["evaluation"][name]
        assert (e1["eval_tokens"], e1["train_steps"]) == (e2["eval_tokens"], e2["train_steps"])
        assert e2["bits_per_byte"] == pytest.approx(e1["bits_per_byte"], rel=1e-6), name
    # exactly one set of outputs: the same files as the single-process run, each round logged once
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "(2 processes)" in log and log.count("finished") == 1
    assert log.count("adat round 1:") == 1 and log.count("eval bpe:") == 1
