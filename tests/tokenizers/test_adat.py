"""The ADAT recipe: schedule and input checks, exact final size with required pieces, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from rich.console import Console

from madapt import catalog
from madapt.config import load_config
from madapt.data.text import read_texts
from madapt.errors import ConfigError, DataError
from madapt.runs import RunFolder
from madapt.tokenizers import adat
from madapt.tokenizers.adat_config import TABLE_5_1_TASKS
from madapt.tokenizers.adat_report import seed_summary
from madapt.tokenizers.evidence import lm_term, prune_by_evidence
from madapt.tokenizers.scoring import LossAccumulator
from madapt.tokenizers.unigram import UnigramModel
from madapt.tokenizers.unigram_round import viterbi_counts

catalog.load_all()


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n".join(read_texts("stdlib_docstrings")[0][:400]) + "\n", encoding="utf-8")
    return path


def tiny(corpus: Path, **extra) -> adat.AdatConfig:
    data = dict(
        kind="adat",
        corpus=str(corpus),
        initial_vocab=700,
        target_vocab=500,
        rounds=2,
        round_train_tokens=300,
        lm=dict(seq_len=16, batch_size=4, eval_batch_size=16),
        evaluate=dict(enabled=False),
    )
    data.update(extra)
    return adat.AdatConfig.model_validate(data)


@pytest.fixture(scope="module")
def prepared(corpus_file: Path) -> adat.Prepared:
    return adat.prepare(tiny(corpus_file))


def test_linear_schedule_and_presets_validate(corpus_file: Path) -> None:
    assert tiny(corpus_file, rounds=3, target_vocab=400).sizes() == [600, 500, 400]
    assert tiny(corpus_file, schedule=[650, 500]).sizes() == [650, 500]
    real = load_config("adat/pythia70m_50k", ["corpus=/data/x.jsonl"])
    assert real.sizes() == [130000, 110000, 90000, 70000, 50000] and real.lm.preset == "pythia-70m"
    assert load_config("adat/micro").sizes()[-1] == load_config("adat/micro").target_vocab


PRESETS = sorted(p.stem for p in (Path(adat.__file__).parents[1] / "configs" / "adat").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_experiment_preset_validates(name: str) -> None:
    cfg = load_config(f"adat/{name}", [] if name.startswith("micro") else ["corpus=/data/x.jsonl"])
    assert cfg.seeds is not None and len(cfg.seeds) == 3  # every comparison over 3 seeds
    if name.startswith("micro"):
        assert cfg.lm.preset in ("pythia-micro", "pythia-tiny") and cfg.corpus == "stdlib_docstrings"
        assert cfg.evaluate.lm_eval is None  # offline
    else:
        assert cfg.lm.preset in ("pythia-70m", "pythia-160m", "pythia-410m") and cfg.lm.seq_len == 2048
        assert tuple(cfg.evaluate.lm_eval.tasks) == TABLE_5_1_TASKS
    assert set(cfg.evaluate.baselines) == {"unigram", "bpe", "bytepiece"} and cfg.evaluate.protocol == "steps"


def test_presets_cover_the_remaining_experiments() -> None:
    full = {
        name: load_config(f"adat/{name}", ["corpus=/data/x.jsonl"])
        for name in PRESETS
        if not name.startswith("micro")
    }
    assert {c.lm.preset for c in full.values()} == {"pythia-70m", "pythia-160m", "pythia-410m"}  # Table 5.2
    transfer = {(c.lm.preset, c.evaluate.lm.preset) for c in full.values() if c.evaluate.lm is not None}
    assert transfer == {
        ("pythia-70m", "pythia-160m"),
        ("pythia-70m", "pythia-410m"),
        ("pythia-410m", "pythia-70m"),
        ("pythia-410m", "pythia-160m"),
    }  # Table 5.3
    assert {c.target_vocab for c in full.values()} == {30000, 50000}  # Table 5.4
    assert {c.initial_vocab for c in full.values()} == {75000, 100000, 150000, 200000}  # Tables 5.5/5.11
    assert {c.rounds for c in full.values()} == {3, 5, 7}  # Table 5.10
    assert {c.initial for c in full.values()} == {"unigram", "bytepiece"}  # Table 5.1
    assert len({c.score_bytes for c in full.values()}) == 4  # Tables 5.5/5.11: 1M..1000M and all
    assert {v.balance for c in full.values() for v in c.variants} == {"ratio", "diff", "logdiff"}


@pytest.mark.parametrize(
    "extra,match",
    [
        (dict(target_vocab=800), "larger than initial_vocab"),
        (dict(schedule=[650, 550]), "not target_vocab 500"),
        (dict(schedule=[750, 500]), "grows"),
        (dict(variants=[{"name": "unigram"}]), "baseline name"),
    ],
)
def test_bad_schedules_are_config_errors(corpus_file: Path, extra: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny(corpus_file, **extra)


def test_bad_corpus_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        adat.prepare(tiny(tmp_path / "missing.txt"))
    small = tmp_path / "small.txt"
    small.write_text("".join(f"line number {i}\n" for i in range(30)), encoding="utf-8")
    with pytest.raises(DataError, match="too small to train a 700-piece"):
        adat.prepare(tiny(small))


def test_target_below_required_pieces_is_a_config_error(corpus_file: Path) -> None:
    with pytest.raises(ConfigError, match="required pieces"):
        adat.prepare(tiny(corpus_file, target_vocab=300, rounds=1))


def test_a_piece_without_evidence_is_decided_by_its_removal_loss_alone() -> None:
    rng = np.random.default_rng(0)
    n = 40
    pieces = [f"p{i}" for i in range(n)]
    a, score = rng.random(n), rng.random(n)
    required = np.zeros(n, bool)
    required[:4] = True
    has = np.ones(n, bool)
    has[4:14] = False  # 10 of 36 removable pieces have no LM evidence
    keep = prune_by_evidence(pieces, score, a, 18, required, has)
    assert (~keep).sum() == 18 and keep[:4].all()
    assert (~keep[4:14]).sum() == 5  # the round's overall rate, 18/36, applied to them
    blind = np.arange(4, 14)
    assert set(blind[~keep[4:14]]) == set(blind[np.argsort(a[4:14])[:5]])  # lowest a first
    # whatever score (imputed or otherwise) a blind piece carries, the decision is the same
    for fake in (np.full(n, np.inf), np.full(n, -np.inf), rng.random(n)):
        other = np.where(has, score, fake)
        np.testing.assert_array_equal(prune_by_evidence(pieces, other, a, 18, required, has), keep)
    # pieces with evidence are ranked by score
    seen = np.flatnonzero(has & ~required)
    assert set(seen[~keep[seen]]) == set(seen[np.argsort(score[seen])[:13]])


def test_lm_term_scores_absent_pieces_from_their_own_evidence() -> None:
    slice_acc, evidence_acc = LossAccumulator(4), LossAccumulator(4)
    slice_acc.total[:] = torch.tensor([3.0, 0, 5, 0], dtype=torch.float64)
    slice_acc.count[:] = torch.tensor([1, 0, 2, 0])
    evidence_acc.total[:] = torch.tensor([9.0, 4.0, 0, 0], dtype=torch.float64)
    evidence_acc.count[:] = torch.tensor([3, 1, 0, 0])
    freq, matchable = np.array([2.0, 1, 4, 1]), np.ones(4, bool)
    term = lm_term(slice_acc, evidence_acc, freq, matchable)
    # piece 1: expected 1/8 x 3 slice tokens, at its own 4 nats; piece 3: no evidence at all
    np.testing.assert_allclose(term.b, [3.0, 3 / 8 * 4.0, 5.0, 0.0])
    assert term.in_slice.tolist() == [True, False, True, False]
    assert term.has_evidence.tolist() == [True, True, True, False]


def test_viterbi_counts_match_sentencepiece(prepared) -> None:
    model = UnigramModel.from_sentencepiece(prepared.initial_proto)
    sp = spm.SentencePieceProcessor(model_proto=prepared.initial_proto)
    train = list(prepared.corpus.texts("train"))
    expected = np.bincount([i for t in train for i in sp.encode(t)], minlength=len(model.pieces))
    counts = viterbi_counts(model, prepared.words)
    matchable = model.matchable
    # sentencepiece agrees on every matchable piece (byte-fallback ids stand in for unknown chars)
    np.testing.assert_array_equal(counts[matchable], expected[matchable])


def test_rounds_score_absent_pieces_on_unseen_text_and_report_the_length_ratio(
    prepared, tmp_path: Path
) -> None:
    cfg = tiny(Path("unused"))
    _, history = adat.run_rounds(cfg, cfg.variants[0], prepared, RunFolder(tmp_path).checkpoints)
    for h in history:
        assert h["unseen_in_scoring"] > 0 and h["scored_from_evidence"] > 0 and h["evidence_docs"] > 0
        assert h["scored_from_evidence"] + h["without_evidence"] <= h["unseen_in_scoring"]
        assert h["length_ratio"] <= cfg.max_length_ratio and h["calibration_ratio"] <= cfg.max_length_ratio
        # pieces without evidence go at the round's rate, no more
        removable = h["size_before"] - h["required"]
        assert h["pruned_without_evidence"] == round(h["pruned"] * h["without_evidence"] / removable)


def test_final_vocabulary_has_target_size_and_every_required_piece(prepared, tmp_path: Path) -> None:
    cfg = tiny(Path("unused"))
    proto, history = adat.run_rounds(cfg, cfg.variants[0], prepared, RunFolder(tmp_path).checkpoints)
    initial = UnigramModel.from_sentencepiece(prepared.initial_proto)
    final = UnigramModel.from_sentencepiece(proto)
    assert len(final.pieces) == 500 and [h["size_after"] for h in history] == [600, 500]
    required = {p for p, r in zip(initial.pieces, initial.required_mask()) if r}
    assert required <= set(final.pieces)
    assert set(final.pieces) < set(initial.pieces)  # pruning only removes
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert sp.get_piece_size() == 500
    assert all(sp.decode(sp.encode(t)) == t for t in prepared.corpus.texts("eval"))
    # scores were re-estimated by EM: a proper distribution over the matchable pieces
    assert np.exp(final.scores[final.matchable]).sum() == pytest.approx(1.0, abs=0.05)


def test_resume_after_an_interrupted_round_reproduces_the_vocabulary(prepared, tmp_path: Path) -> None:
    cfg = tiny(Path("unused"))
    variant = cfg.variants[0]
    assert variant.beta > 0  # momentum state must survive the interruption too
    straight, first_history = adat.run_rounds(cfg, variant, prepared, RunFolder(tmp_path / "a").checkpoints)

    class Killed(Exception):
        pass

    def kill(r: int, entry: dict) -> None:
        raise Killed

    checkpoints = RunFolder(tmp_path / "b").checkpoints
    with pytest.raises(Killed):
        adat.run_rounds(cfg, variant, prepared, checkpoints, on_round=kill)
    assert checkpoints.load().unit == {"round": 1}
    rounds_run = []
    resumed, history = adat.run_rounds(
        cfg, variant, prepared, checkpoints, on_round=lambda r, e: rounds_run.append(r)
    )
    assert rounds_run == [2] and len(history) == 2
    # round 2 read on from where round 1 stopped, also after the restart (the cursor is checkpointed)
    assert history[1]["train_first_doc"] == history[0]["train_first_doc"] + history[0]["train_docs"] > 0
    assert [h["train_first_doc"] for h in history] == [h["train_first_doc"] for h in first_history]
    a, b = UnigramModel.from_sentencepiece(straight), UnigramModel.from_sentencepiece(resumed)
    assert a.pieces == b.pieces
    np.testing.assert_array_equal(a.scores, b.scores)


def test_balance_function_changes_what_is_pruned(prepared, tmp_path: Path) -> None:
    cfg = tiny(Path("unused"), rounds=1)
    ratio, _ = adat.run_rounds(
        cfg, adat.VariantConfig(balance="ratio"), prepared, RunFolder(tmp_path / "r").checkpoints
    )
    diff, _ = adat.run_rounds(
        cfg, adat.VariantConfig(balance="diff"), prepared, RunFolder(tmp_path / "d").checkpoints
    )
    assert UnigramModel.from_sentencepiece(ratio).pieces != UnigramModel.from_sentencepiece(diff).pieces


@pytest.mark.slow
def test_recipe_run_and_report_with_evaluation(corpus_file: Path, prepared, tmp_path: Path) -> None:
    cfg = tiny(corpus_file, rounds=1, evaluate=dict(epochs=1, train_bytes=20_000))
    folder = RunFolder(tmp_path / "run")
    folder.start("kind: adat\n")
    results = adat.run(cfg, prepared, folder, Console(quiet=True))
    adat.report(results, folder, Console(quiet=True))
    assert set(results["evaluation"]) == {"adat", "unigram", "bpe", "bytepiece"}
    # equal LM steps for every tokenizer compared (the step confound of equal-bytes training)
    assert len({r["train_steps"] for r in results["evaluation"].values()}) == 1
    assert all(r["vocab_size"] == 500 for r in results["evaluation"].values())
    assert results["beats_unigram_bpb"]["adat"] == (
        results["evaluation"]["adat"]["bits_per_byte"] < results["evaluation"]["unigram"]["bits_per_byte"]
    )
    assert results["variants"]["adat"]["roundtrip_lossless"] is True
    assert (folder.path / "adat" / "tokenizer.model").is_file()
    assert (folder.path / "adat" / "tokenizer.json").is_file()
    assert (folder.path / "baselines" / "bpe" / "tokenizer.json").is_file()
    assert "bits/byte" in folder.report_path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_cli_reports_a_too_small_corpus_in_one_line(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("".join(f"line number {i}\n" for i in range(30)), encoding="utf-8")
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "madapt.cli", "run", "adat/micro", f"corpus={small}", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "too small to train a 8000-piece" in lines[0] and not out.exists()


def test_seed_summary_is_mean_and_sample_std_with_the_paired_difference() -> None:
    def result(adat_bpb: float, uni_bpb: float) -> dict:
        row = {"bytes_per_token": 3.0, "token_ppl": 9.0, "train_steps": 100}
        return {
            "evaluation": {
                "adat": {**row, "bits_per_byte": adat_bpb},
                "unigram": {**row, "bits_per_byte": uni_bpb},
            }
        }

    summary = seed_summary({"0": result(2.0, 2.1), "1": result(2.2, 2.1), "2": result(2.1, 2.3)})
    assert summary["tokenizers"]["adat"]["bits_per_byte"]["mean"] == pytest.approx(2.1)
    assert summary["tokenizers"]["adat"]["bits_per_byte"]["std"] == pytest.approx(0.1)  # ddof = 1
    paired = summary["bpb_minus_unigram"]["adat"]
    assert paired["mean"] == pytest.approx((-0.1 + 0.1 - 0.2) / 3) and paired["seeds_below_unigram"] == 2
    assert "unigram" not in summary["bpb_minus_unigram"]


def test_seeds_override_from_the_command_line() -> None:
    assert load_config("adat/micro", ["seeds=[4]"]).seeds == [4]
    with pytest.raises(ConfigError, match="repeats"):
        load_config("adat/micro", ["seeds=[1, 1]"])


@pytest.mark.slow
def test_several_seeds_run_in_their_folders_and_resume(corpus_file: Path, tmp_path: Path) -> None:
    cfg = tiny(
        corpus_file,
        rounds=1,
        seeds=[0, 1],
        evaluate=dict(epochs=1, train_bytes=20_000, baselines=["unigram"]),
    )
    folder = RunFolder(tmp_path / "run")
    folder.start("kind: adat\n")
    results = adat.run(cfg, adat.prepare(cfg), folder, Console(quiet=True))
    assert set(results["seeds"]) == {"0", "1"} and (folder.path / "seed_1" / "results.json").is_file()
    bpb = [results["seeds"][s]["evaluation"]["adat"]["bits_per_byte"] for s in ("0", "1")]
    assert bpb[0] != bpb[1]  # other held-out split, other LMs
    assert results["summary"]["tokenizers"]["adat"]["bits_per_byte"]["mean"] == pytest.approx(np.mean(bpb))
    adat.report(results, folder, Console(quiet=True))
    assert "over 2 seeds" in folder.report_path.read_text(encoding="utf-8")
    # a finished seed is read back, not rerun
    (folder.path / "seed_0" / "adat").rename(tmp_path / "moved")
    again = adat.run(cfg, adat.prepare(cfg), folder, Console(quiet=True))
    assert again["summary"] == results["summary"] and not (folder.path / "seed_0" / "adat").exists()
