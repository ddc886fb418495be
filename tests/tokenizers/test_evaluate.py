"""Tokenizer evaluation: bits per byte by hand, overlap (eq. 5.6), baselines, equal-bytes training."""

from __future__ import annotations

import math

import pytest
import sentencepiece as spm
import torch

from madapt.backbones.causal_lm import build_causal_lm
from madapt.data.text import read_texts
from madapt.errors import DataError
from madapt.tokenizers import evaluate as ev
from madapt.tokenizers.lm_scoring import LMSettings, accumulate_loss, pack


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return read_texts("stdlib_docstrings")[0][:300]


def test_bits_per_byte_of_a_uniform_model_equals_hand_computation() -> None:
    vocab = 16
    model = build_causal_lm("pythia-micro", vocab, seed=0)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # logits all 0: every next token has probability 1/16
    texts = ["abc", "d\u00e9"]  # 3 + 3 UTF-8 bytes, + 1 newline per document = 8 bytes
    ids = [5, 6, 7, 2, 8, 9, 2]  # 5 pieces + 2 separators = 7 predicted tokens
    nll = float(accumulate_loss(model, pack(ids, 4, 2), vocab).total.sum())
    assert nll == pytest.approx(7 * math.log(16))
    assert ev.text_bytes(texts) == 8
    assert ev.bits_per_byte(nll, ev.text_bytes(texts)) == pytest.approx(7 * 4 / 8)  # log2(16) = 4 bits
    assert ev.bits_per_byte(8 * math.log(2), 4) == pytest.approx(2.0)


def test_vocab_overlap_is_jaccard() -> None:
    assert ev.vocab_overlap({"a", "b", "c"}, {"b", "c", "d"}) == pytest.approx(0.5)
    assert ev.vocab_overlap({"a"}, {"a"}) == 1.0 and ev.vocab_overlap({"a"}, {"b"}) == 0.0


def test_unigram_baseline_is_lossless_and_sized(corpus: list[str]) -> None:
    proto = ev.train_unigram(corpus, 700)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert sp.get_piece_size() == 700
    for text in ["two  spaces,\ttab and trailing ", "unseen \u0416\u4e2d\U0001f600 chars", corpus[0]]:
        assert sp.decode(sp.encode(text)) == text  # identity normalisation + byte fallback


def test_too_small_corpus_is_a_data_error() -> None:
    with pytest.raises(DataError, match="too small to train a 5000-piece"):
        ev.train_unigram(["tiny corpus"] * 5, 5000, where="corpus 'x'")


def test_bpe_baseline_size_and_round_trip(corpus: list[str]) -> None:
    tok = ev.train_bpe(corpus, 700)
    assert tok.get_vocab_size() == 700
    text = "unseen \u0416\u4e2d\U0001f600 chars"
    assert tok.decode(tok.encode(text).ids) == text
    cand = ev.bpe_candidate("bpe", tok)
    assert cand.sep_id == tok.token_to_id(ev.BPE_SEPARATOR) and len(cand.pieces) == 700


def test_evaluate_trains_on_equal_bytes_and_metrics_agree(corpus: list[str]) -> None:
    settings = LMSettings(seq_len=32, batch_size=4, eval_batch_size=16)
    unigram = ev.sentencepiece_candidate("unigram", ev.train_unigram(corpus, 700))
    bpe = ev.bpe_candidate("bpe", ev.train_bpe(corpus, 700))
    train, held = corpus[:60], corpus[250:270]
    results = {c.name: ev.evaluate(c, train, held, settings, epochs=1, seed=0) for c in (unigram, bpe)}
    for r in results.values():
        assert r["eval_bytes"] == ev.text_bytes(held)  # same held-out bytes for every tokenizer
        assert r["bytes_per_token"] == pytest.approx(r["eval_bytes"] / r["eval_tokens"])
        # BPB = (tokens / byte) x log2(token PPL): the two views of the same NLL
        assert r["bits_per_byte"] == pytest.approx(math.log2(r["token_ppl"]) / r["bytes_per_token"])
        assert r["train_steps"] == (r["train_tokens"] // 31) // 4
    # equal bytes, not equal tokens: the tokenizers see different token counts
    assert results["unigram"]["train_tokens"] != results["bpe"]["train_tokens"]


def test_equal_steps_protocol_gives_every_tokenizer_the_same_steps(corpus: list[str]) -> None:
    settings = LMSettings(seq_len=32, batch_size=4, eval_batch_size=16)
    fine = ev.sentencepiece_candidate("fine", ev.train_unigram(corpus, 400))  # more tokens per byte
    coarse = ev.sentencepiece_candidate("coarse", ev.train_unigram(corpus, 900))
    train, held = corpus[:60], corpus[250:260]
    own = {
        c.name: ev.evaluate(c, train, held, settings, epochs=1, seed=0)["train_steps"] for c in (fine, coarse)
    }
    assert own["fine"] > own["coarse"]  # the confound: equal bytes give the finer tokenizer more steps
    steps = ev.equal_steps([fine, coarse], train, settings, epochs=1)
    assert steps == own["coarse"]
    equal = {
        c.name: ev.evaluate(c, train, held, settings, epochs=1, seed=0, steps=steps) for c in (fine, coarse)
    }
    assert equal["fine"]["train_steps"] == equal["coarse"]["train_steps"] == steps
    assert equal["fine"]["train_tokens_seen"] == equal["coarse"]["train_tokens_seen"] == steps * 4 * 31
    assert equal["fine"]["train_epochs_seen"] < equal["coarse"]["train_epochs_seen"] <= 1.0


def _tiny_adat(**evaluate) -> dict:
    return {
        "kind": "adat",
        "corpus": "stdlib_docstrings",
        "initial_vocab": 700,
        "target_vocab": 500,
        "rounds": 1,
        "evaluate": evaluate,
    }


def test_lm_eval_config_is_validated_in_one_line() -> None:
    from madapt import catalog
    from madapt.config import validate
    from madapt.errors import ConfigError

    catalog.load_all()
    cfg = validate(_tiny_adat(lm_eval={"tasks": ["arc_easy", "lambada_openai"]}), "x.yaml")
    assert cfg.evaluate.lm_eval.spec() == ev.LMEvalSpec(("arc_easy", "lambada_openai"), 5, None, 8)
    assert validate(_tiny_adat(), "x.yaml").evaluate.lm_eval is None  # off unless asked for
    for bad, match in [
        ({"tasks": []}, "tasks"),
        ({"tasks": ["arc easy"]}, "not a task name"),
        ({"tasks": ["piqa", "piqa"]}, "listed twice"),
        ({"tasks": ["piqa"], "num_fewshot": -1}, "num_fewshot"),
    ]:
        with pytest.raises(ConfigError, match=match) as info:
            validate(_tiny_adat(lm_eval=bad), "x.yaml")
        assert "\n" not in info.value.one_line()


@pytest.fixture
def no_lm_eval(monkeypatch):
    """Make ``import lm_eval`` fail as it does when the extra is not installed."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(__import__("sys").modules, "lm_eval", raising=False)


def test_lm_eval_not_installed_is_one_line_naming_the_extra(no_lm_eval, corpus: list[str]) -> None:
    from madapt.errors import ConfigError
    from madapt.tokenizers import adat

    with pytest.raises(ConfigError) as info:
        ev.require_lm_eval()
    line = info.value.one_line()
    assert "pip install 'madapt[lm-eval]'" in line and "\n" not in line
    # evaluate() refuses before training anything, and the recipe before reading the corpus
    cand = ev.sentencepiece_candidate("unigram", ev.train_unigram(corpus, 700))
    with pytest.raises(ConfigError, match="lm-eval"):
        ev.evaluate(cand, corpus[:10], corpus[10:12], LMSettings(seq_len=16), 1, 0, ev.LMEvalSpec(("piqa",)))
    cfg = adat.AdatConfig.model_validate(_tiny_adat(lm_eval={"tasks": ["piqa"]}) | {"corpus": "/missing.txt"})
    with pytest.raises(ConfigError, match="lm-eval"):
        adat.prepare(cfg)


def test_lm_eval_offline_download_failure_names_the_task(monkeypatch) -> None:
    """Installed but offline: a stand-in ``lm_eval`` whose dataset download fails (no real lm-eval)."""
    import sys
    import types

    class HubUnreachable(Exception):
        pass

    HubUnreachable.__module__ = "huggingface_hub.errors"
    calls = []

    def simple_evaluate(model, tasks, num_fewshot, limit):
        calls.append(tasks)
        if tasks == ["piqa"]:
            try:
                raise ConnectionError("Couldn't reach 'ybisk/piqa' on the Hub (LocalEntryNotFoundError)")
            except ConnectionError as err:
                raise HubUnreachable("wrapped") from err
        return {"results": {tasks[0]: {"acc,none": 0.5, "alias": tasks[0]}}}

    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate = simple_evaluate
    models = types.ModuleType("lm_eval.models")
    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = lambda **kwargs: kwargs
    for name, module in [("lm_eval", fake), ("lm_eval.models", models), ("lm_eval.models.huggingface", hf)]:
        monkeypatch.setitem(sys.modules, name, module)

    assert ev.run_lm_eval(None, None, ev.LMEvalSpec(("sciq",)), 128) == {"sciq": {"acc,none": 0.5}}
    with pytest.raises(DataError) as info:
        ev.run_lm_eval(None, None, ev.LMEvalSpec(("sciq", "piqa", "boolq")), 128)
    assert info.value.one_line().startswith("lm-eval task 'piqa': its dataset could not be loaded")
    assert calls[-1] == ["piqa"]  # one task at a time; stopped at the failing one
    # any other error is a bug and keeps its traceback
    fake.simple_evaluate = lambda **kwargs: 1 / 0
    with pytest.raises(ZeroDivisionError):
        ev.run_lm_eval(None, None, ev.LMEvalSpec(("sciq",)), 128)


def test_initial_vocabulary_learns_from_documents_longer_than_sentencepieces_default_limit() -> None:
    """sentencepiece skips "sentences" over 4192 bytes unless told otherwise; Pile documents are
    longer. A character that occurs only in a 21 kB document must still get its own piece."""
    import sentencepiece as spm

    from madapt.tokenizers.evaluate import train_unigram

    short = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn"] * 200
    long_doc = "жир " * 3000
    sp = spm.SentencePieceProcessor(model_proto=train_unigram([*short, long_doc], 284))
    assert "ж" in {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
