"""Export of a pruned vocabulary as sentencepiece .model and a Hugging Face folder (issue 16 item 3)."""

from __future__ import annotations

import io
import json
import random
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from madapt.errors import WeightsError
from madapt.tokenizers.evaluate import train_unigram
from madapt.tokenizers.export import BYTE_PIECES, HF_FILES, export, hf_tokenizer, model_proto
from madapt.tokenizers.scoring import prune
from madapt.tokenizers.unigram import BYTE, UnigramModel, word_counts
from madapt.tokenizers.unigram_round import reestimate_scores, removal_loss
from madapt.tokenizers.units import sp_normalizer

PARAGRAPH = """
A tokenizer splits text into pieces that a language model reads one at a time. The unigram
model keeps a large vocabulary of candidate pieces and removes, round after round, the pieces
whose loss hurts the likelihood of the corpus the least. Adaptive tokenizers also ask the
language model which pieces it predicts badly, and prefer to keep pieces that are frequent and
easy to predict. Every single character and every byte stays in the vocabulary, so any string
can still be encoded, and decoding the pieces gives back the original text exactly.
"""
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def training_sentences(n: int = 1500) -> list[str]:
    rng = random.Random(0)
    words = PARAGRAPH.split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sentences = training_sentences()
    proto = train_unigram(sentences, 420, character_coverage=1.0)
    initial = UnigramModel.from_sentencepiece(proto)
    corpus = word_counts(sentences, sp_normalizer(proto))
    n_remove = 40
    keep = prune(initial.pieces, removal_loss(initial, corpus), n_remove, initial.required_mask())
    pruned = reestimate_scores(initial.subset(keep), corpus)
    folder = tmp_path_factory.mktemp("tok")
    sp_path, json_path = export(proto, pruned, folder)
    return {
        "initial": initial,
        "pruned": pruned,
        "n_remove": n_remove,
        "sentences": sentences,
        "folder": folder,
        "sp": spm.SentencePieceProcessor(model_file=str(sp_path)),
        "sp_path": sp_path,
        "hf": PreTrainedTokenizerFast(tokenizer_file=str(json_path)),
        "auto": AutoTokenizer.from_pretrained(folder),
    }


def test_exported_model_has_pruned_pieces_and_kept_specs(exported: dict) -> None:
    initial, pruned, sp = exported["initial"], exported["pruned"], exported["sp"]
    assert len(pruned.pieces) == len(initial.pieces) - exported["n_remove"]
    assert sp.get_piece_size() == len(pruned.pieces) == len(exported["hf"]) == len(exported["auto"])
    assert [sp.id_to_piece(i) for i in range(sp.get_piece_size())] == pruned.pieces
    scores = [sp.get_score(i) for i in range(sp.get_piece_size())]
    np.testing.assert_allclose(scores, pruned.scores, rtol=1e-6)
    proto = pb.ModelProto()
    proto.ParseFromString(exported["sp_path"].read_bytes())
    assert not proto.normalizer_spec.add_dummy_prefix and proto.denormalizer_spec.precompiled_charsmap
    assert proto.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM and proto.trainer_spec.byte_fallback
    assert [p.piece for p in proto.pieces if p.type == BYTE] == BYTE_PIECES
    required = {p for p, r in zip(initial.pieces, initial.required_mask()) if r}
    assert required <= set(pruned.pieces)


def test_folder_is_save_pretrained_style_with_special_tokens(exported: dict) -> None:
    folder, sp, auto = exported["folder"], exported["sp"], exported["auto"]
    assert {p.name for p in folder.iterdir()} == {"tokenizer.model", *HF_FILES}
    special_map = json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert {k: v if isinstance(v, str) else v["content"] for k, v in special_map.items()} == {
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
    }
    assert (
        (auto.unk_token_id, auto.bos_token_id, auto.eos_token_id, auto.pad_token_id)
        == (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
        == (0, 1, 2, 3)
    )
    batch = auto(["short", "a much longer text"], padding=True)
    assert batch["input_ids"][0][-1] == sp.pad_id() and batch["attention_mask"][0][-1] == 0


def test_missing_byte_pieces_are_added(exported: dict) -> None:
    model = exported["pruned"]
    no_bytes = model.subset(model.types != BYTE)
    proto = pb.ModelProto()
    proto.ParseFromString(model_proto(exported["sp_path"].read_bytes(), no_bytes))
    assert [p.piece for p in proto.pieces][-256:] == BYTE_PIECES
    assert len(proto.pieces) == len(model.pieces)


EXTRA = [
    "",
    " ",
    "  two  spaces ",
    "tab\tand\nnewline",
    "Grüße, 世界 😀!",
    "tokenizer" * 5,
    "a\u2581b ▁▁",
    "\ue000 1 \ue0001",
    " leading",
]


def test_both_formats_segment_identically(exported: dict) -> None:
    sp, hf, auto = exported["sp"], exported["hf"], exported["auto"]
    for text in exported["sentences"][:200] + EXTRA:
        assert hf(text)["input_ids"] == sp.encode(text) == auto(text)["input_ids"], text


def test_special_tokens_get_no_stray_space_marker(exported: dict) -> None:
    sp, auto = exported["sp"], exported["auto"]
    for text in ["<s>hello world</s>", "<s> hello", "hi<pad><pad>", "</s>\nnext", "<unk>x"]:
        ids = auto(text)["input_ids"]
        tokens = auto.convert_ids_to_tokens(ids)
        for before, after in pairwise(tokens):
            if before in SPECIALS:
                assert not (after.startswith("▁") and not text.split(before, 1)[1].startswith(" ")), (
                    text,
                    tokens,
                )
        assert auto.decode(ids) == text
    ids = auto("<s>hello")["input_ids"]
    assert ids[0] == sp.bos_id() and ids[1:] == sp.encode("hello")


SPECIAL_TEXT = st.sampled_from([*SPECIALS, "\u2581", "\ue000", " ", "\n", "\t", "1", "2"])
TEXT = st.lists(
    st.one_of(SPECIAL_TEXT, st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)), max_size=10
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_round_trip_over_any_text_in_both_formats_and_through_auto_tokenizer(
    exported: dict, text: str
) -> None:
    sp, hf, auto = exported["sp"], exported["hf"], exported["auto"]
    ids = sp.encode(text)
    assert sp.decode(ids) == text  # U+2581 included: the escape of `units`
    assert auto.decode(auto(text)["input_ids"]) == text  # special tokens included
    assert hf.decode(hf(text)["input_ids"]) == text
    if not any(s in text for s in SPECIALS):  # special strings are special tokens only in tokenizer.json
        assert auto(text)["input_ids"] == ids


def test_a_dummy_prefix_model_still_segments_like_sentencepiece() -> None:
    """Models trained elsewhere with sentencepiece's defaults (dummy prefix, no escape)."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_sentences(600)),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=300,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buffer.getvalue())
    tok = hf_tokenizer(buffer.getvalue())
    for text in training_sentences(50) + ["  two  spaces ", "tab\tand\nnewline", "Grüße 😀"]:
        assert tok.encode(text).ids == sp.encode(text)
        assert tok.decode(tok.encode(text).ids) == sp.decode(sp.encode(text))


def test_unreadable_template_is_a_weights_error(tmp_path: Path, exported: dict) -> None:
    bad = tmp_path / "broken.model"
    bad.write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(WeightsError):
        model_proto(bad, exported["pruned"])
