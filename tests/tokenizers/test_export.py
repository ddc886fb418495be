"""Export of a pruned vocabulary as sentencepiece .model and tokenizer.json (issue 5, item 5)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import PreTrainedTokenizerFast

from madapt.errors import WeightsError
from madapt.tokenizers.export import BYTE_PIECES, export, model_proto
from madapt.tokenizers.scoring import prune
from madapt.tokenizers.unigram import BYTE, UnigramModel, reestimate_scores, removal_loss, word_counts

PARAGRAPH = """
A tokenizer splits text into pieces that a language model reads one at a time. The unigram
model keeps a large vocabulary of candidate pieces and removes, round after round, the pieces
whose loss hurts the likelihood of the corpus the least. Adaptive tokenizers also ask the
language model which pieces it predicts badly, and prefer to keep pieces that are frequent and
easy to predict. Every single character and every byte stays in the vocabulary, so any string
can still be encoded, and decoding the pieces gives back the original text exactly.
"""


def training_sentences(n: int = 1500) -> list[str]:
    rng = random.Random(0)
    words = PARAGRAPH.split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sentences = training_sentences()
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buffer, model_type="unigram", vocab_size=500,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    initial = UnigramModel.from_sentencepiece(buffer.getvalue())
    corpus = word_counts(sentences)
    n_remove = 40
    keep = prune(initial.pieces, removal_loss(initial, corpus), n_remove, initial.required_mask())
    pruned = reestimate_scores(initial.subset(keep), corpus)
    sp_path, json_path = export(buffer.getvalue(), pruned, tmp_path_factory.mktemp("tok"))
    return {
        "initial": initial, "pruned": pruned, "n_remove": n_remove, "sentences": sentences,
        "sp": spm.SentencePieceProcessor(model_file=str(sp_path)),
        "hf": PreTrainedTokenizerFast(tokenizer_file=str(json_path)), "sp_path": sp_path,
    }


def test_exported_model_has_pruned_pieces_and_kept_specs(exported: dict) -> None:
    initial, pruned, sp = exported["initial"], exported["pruned"], exported["sp"]
    assert len(pruned.pieces) == len(initial.pieces) - exported["n_remove"]
    assert sp.get_piece_size() == len(pruned.pieces) == len(exported["hf"])
    assert [sp.id_to_piece(i) for i in range(sp.get_piece_size())] == pruned.pieces
    scores = [sp.get_score(i) for i in range(sp.get_piece_size())]
    np.testing.assert_allclose(scores, pruned.scores, rtol=1e-6)
    proto = pb.ModelProto()
    proto.ParseFromString(exported["sp_path"].read_bytes())
    assert proto.normalizer_spec.name == "identity"
    assert proto.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM and proto.trainer_spec.byte_fallback
    assert [p.piece for p in proto.pieces if p.type == BYTE] == BYTE_PIECES
    required = {p for p, r in zip(initial.pieces, initial.required_mask()) if r}
    assert required <= set(pruned.pieces)


def test_missing_byte_pieces_are_added(exported: dict) -> None:
    model = exported["pruned"]
    no_bytes = model.subset(model.types != BYTE)
    proto = pb.ModelProto()
    proto.ParseFromString(model_proto(exported["sp_path"].read_bytes(), no_bytes))
    assert [p.piece for p in proto.pieces][-256:] == BYTE_PIECES
    assert len(proto.pieces) == len(model.pieces)


def test_both_formats_segment_identically(exported: dict) -> None:
    sp, hf = exported["sp"], exported["hf"]
    extra = ["", " ", "  two  spaces ", "tab\tand\nnewline", "Grüße, 世界 😀!", "tokenizer" * 5]
    for text in exported["sentences"][:200] + extra:
        assert hf(text)["input_ids"] == sp.encode(text), text


# U+2581 is sentencepiece's whitespace marker, so it cannot round-trip by design.
CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581")
TEXT = st.text(alphabet=CHARS, max_size=40)


@settings(max_examples=80, deadline=None)
@given(text=TEXT)
def test_round_trip_is_lossless_and_formats_agree(exported: dict, text: str) -> None:
    sp, hf = exported["sp"], exported["hf"]
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert hf(text)["input_ids"] == ids
    assert hf.decode(ids) == text


def test_unreadable_template_is_a_weights_error(tmp_path: Path, exported: dict) -> None:
    bad = tmp_path / "broken.model"
    bad.write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(WeightsError):
        model_proto(bad, exported["pruned"])
