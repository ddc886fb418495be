"""Compare tokenizers by training the same LM with each (seed 000 §5.4.1.4, §5.4.7; issue 5 item 6).

Fairness rules (reference notes §7): every tokenizer's LM is trained from scratch on the same
training *text* (equal bytes, so a tokenizer with fewer tokens also gets fewer optimizer steps,
as at real scale where the corpus is fixed) with the same preset, batch and learning rate, and is
scored on the same held-out text with Viterbi (deterministic) segmentation. Reported:

* bits per byte = total NLL (nats) / ln 2 / UTF-8 bytes, the comparison that is fair across
  vocabularies. Every held-out document is followed by a separator token whose NLL counts, and
  which is charged one byte (the newline it stands for);
* token perplexity exp(NLL / tokens), the paper's metric, NOT comparable across vocabularies (a
  finer segmentation divides the same NLL by more tokens);
* compression: UTF-8 bytes per token (higher = shorter sequences);
* vocabulary overlap (eq. 5.6): |A ∩ B| / |A ∪ B| over piece strings.

Baselines at the target size: Unigram (sentencepiece) and byte-level BPE (Hugging Face
``tokenizers``). All sentencepiece models use identity normalisation, no whitespace collapsing and
byte fallback, so decode(encode(text)) == text.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from madapt.backbones.causal_lm import build_causal_lm
from madapt.errors import DataError
from madapt.tokenizers.lm_scoring import (
    Encode,
    LMSettings,
    accumulate_loss,
    pack,
    sp_encoder,
    stream,
    train_lm,
)

BPE_SEPARATOR = "<|endoftext|>"


@dataclass
class Candidate:
    """A tokenizer under comparison: batch encoder, vocabulary size, separator id, piece strings."""

    name: str
    encode: Encode
    vocab_size: int
    sep_id: int
    pieces: frozenset[str]


def train_unigram(texts: Sequence[str], vocab_size: int, *, character_coverage: float = 0.9995,
                  max_piece_length: int = 16, num_threads: int = 2, where: str = "corpus") -> bytes:
    """A sentencepiece Unigram ``.model`` (serialized) with byte fallback and identity normalisation.

    A corpus too small for ``vocab_size`` becomes a `DataError` naming ``where``.
    """
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buffer, model_type="unigram", vocab_size=vocab_size,
            byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            character_coverage=character_coverage, max_sentencepiece_length=max_piece_length,
            num_threads=num_threads, minloglevel=2)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[-120:]
        if "Vocabulary size too high" not in detail:
            raise DataError(where, f"sentencepiece cannot train on it ({detail})", "a usable text corpus") from None
        raise DataError(where, f"too small to train a {vocab_size}-piece Unigram vocabulary "
                        f"(sentencepiece: {detail})",
                        "more text, or a smaller vocabulary size") from None
    return buffer.getvalue()


def sentencepiece_candidate(name: str, proto: bytes) -> Candidate:
    sp = spm.SentencePieceProcessor(model_proto=proto)
    pieces = frozenset(sp.id_to_piece(i) for i in range(sp.get_piece_size()))
    return Candidate(name, sp_encoder(sp), sp.get_piece_size(), sp.eos_id(), pieces)


def train_bpe(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2/Pythia style) with ``vocab_size`` entries including 256 bytes and the
    separator; fewer when the text has too few pairs to merge."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_SEPARATOR], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def bpe_candidate(name: str, tok: Tokenizer) -> Candidate:
    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts)]

    return Candidate(name, encode, tok.get_vocab_size(), tok.token_to_id(BPE_SEPARATOR),
                     frozenset(tok.get_vocab()))


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total NLL in nats over the UTF-8 bytes it encodes, in bits per byte."""
    return nll_nats / math.log(2) / n_bytes


def vocab_overlap(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """Eq. 5.6: |A ∩ B| / |A ∪ B|."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def text_bytes(texts: Sequence[str]) -> int:
    """UTF-8 bytes of the documents plus one (newline) per document, matching the separators."""
    return sum(len(t.encode("utf-8")) + 1 for t in texts)


def evaluate(candidate: Candidate, train_texts: Sequence[str], eval_texts: Sequence[str],
             settings: LMSettings, epochs: int, seed: int) -> dict[str, Any]:
    """Train ``settings.preset`` from scratch on ``train_texts`` with this tokenizer for ``epochs``
    passes and score ``eval_texts``; returns the metrics of the module docstring."""
    train_ids = stream(candidate.encode, train_texts, candidate.sep_id)
    blocks = pack(train_ids, settings.seq_len, candidate.sep_id, keep_partial=False)
    if len(blocks.ids) == 0:
        raise DataError("evaluation training text", f"gives {len(train_ids)} tokens with {candidate.name}",
                        f"at least one block of {settings.seq_len - 1} tokens")
    steps = max(1, epochs * len(blocks.ids) // settings.batch_size)
    model = build_causal_lm(settings.preset, candidate.vocab_size, seed=seed)
    losses = train_lm(model, blocks, steps, settings, seed)
    eval_ids = stream(candidate.encode, eval_texts, candidate.sep_id)
    eval_blocks = pack(eval_ids, settings.seq_len, candidate.sep_id)
    acc = accumulate_loss(model, eval_blocks, candidate.vocab_size, settings.eval_batch_size)
    nll = float(acc.total.sum())
    n_bytes, n_tokens = text_bytes(eval_texts), len(eval_ids)
    return {
        "vocab_size": candidate.vocab_size,
        "bits_per_byte": bits_per_byte(nll, n_bytes),
        "token_ppl": math.exp(nll / n_tokens),
        "bytes_per_token": n_bytes / n_tokens,
        "train_tokens": len(train_ids),
        "train_steps": steps,
        "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
        "eval_tokens": n_tokens,
        "eval_bytes": n_bytes,
    }
