"""LM loss per piece (seed 000 eq. 5.3, §5.3.2.1): train a randomly initialised GPT-NeoX on text
segmented by random sampling, then sum each piece's next-token cross-entropy on a held-out slice.

Token streams: documents are encoded, each followed by a separator id (sentencepiece's ``</s>``),
and concatenated. A block of ``seq_len`` ids starts with a separator (context only) followed by
the next ``seq_len - 1`` stream ids, so every stream id is predicted exactly once, with at least
the separator as context; the last block is right-padded and masked. The same packing is used by
`madapt.tokenizers.evaluate` for bits per byte.

Training data for the scoring LM is randomly segmented (§5.3.2.1) so that pieces the Viterbi path
rarely picks still get trained: `sampling.SegmentationSampler` draws from sentencepiece's
``enable_sampling=True, alpha, nbest_size=-1`` distribution (forward-filtering backward-sampling
over the full lattice) with a numpy generator seeded by the round seed, so a round's training
stream is the same in whatever process runs it (sentencepiece's own sampler cannot be seeded
across processes). The held-out slice is segmented with sentencepiece's Viterbi (deterministic),
the segmentation the final tokenizer will produce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm
import torch
from transformers import GPTNeoXForCausalLM

from madapt.backbones.causal_lm import build_causal_lm
from madapt.tokenizers.sampling import SegmentationSampler
from madapt.tokenizers.scoring import LossAccumulator
from madapt.training import build_optimizer, warmup_cosine

Encode = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class LMSettings:
    """How a scoring or evaluation LM is built and trained (Pythia recipe, micro sizes allowed)."""

    preset: str = "pythia-micro"
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.01
    max_grad_norm: float = 1.0
    eval_batch_size: int = 32


@dataclass(frozen=True)
class Blocks:
    """Packed token blocks: ``ids`` [N, T] and ``mask`` [N, T] (False on right padding)."""

    ids: torch.Tensor
    mask: torch.Tensor

    @property
    def n_predicted(self) -> int:
        """Number of scored positions (every stream token, separators included)."""
        return int((self.mask[:, 1:] & self.mask[:, :-1]).sum())


def sp_encoder(sp: spm.SentencePieceProcessor, sample: bool = False, alpha: float = 0.1) -> Encode:
    """Batch encoder for a sentencepiece model: Viterbi, or sentencepiece's own sampling over the
    full lattice (not reproducible across processes; ADAT rounds use `SegmentationSampler`).

    Sampling encodes one text per call: sentencepiece's batch call reseeds its samplers from the
    global seed on every call, so repeated batches would repeat the same "random" segmentation.
    """
    if sample:
        return lambda texts: [sp.encode(t, enable_sampling=True, alpha=alpha, nbest_size=-1) for t in texts]
    return lambda texts: sp.encode(texts)


def stream(encode: Encode, texts: Sequence[str], sep_id: int) -> list[int]:
    """Concatenated ids of ``texts``, each document followed by ``sep_id``."""
    out: list[int] = []
    for ids in encode(list(texts)):
        out.extend(ids)
        out.append(sep_id)
    return out


def pack(ids: Sequence[int], seq_len: int, sep_id: int, keep_partial: bool = True) -> Blocks:
    """Blocks of ``[sep] + ids[k(T-1):(k+1)(T-1)]``; see the module docstring."""
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    body = seq_len - 1
    n_full, rest = divmod(len(ids), body)
    n = n_full + (1 if rest and keep_partial else 0)
    out = torch.full((n, seq_len), sep_id, dtype=torch.long)
    mask = torch.zeros((n, seq_len), dtype=torch.bool)
    flat = torch.tensor(list(ids[: n * body]), dtype=torch.long)
    for k in range(n):
        chunk = flat[k * body:(k + 1) * body]
        out[k, 1:1 + len(chunk)] = chunk
        mask[k, :1 + len(chunk)] = True
    return Blocks(out, mask)


def sampled_stream(encode: Encode, texts: Sequence[str], sep_id: int, n_tokens: int,
                   chunk: int = 256) -> list[int]:
    """At least ``n_tokens`` ids from cycling through ``texts``, re-encoding on every pass (with a
    sampling encoder every pass sees a new segmentation)."""
    if not texts:
        raise ValueError("no texts to encode")
    out: list[int] = []
    start = 0
    while len(out) < n_tokens:
        batch = [texts[(start + i) % len(texts)] for i in range(chunk)]
        start = (start + chunk) % len(texts)
        out.extend(stream(encode, batch, sep_id))
    return out[:n_tokens]


def train_lm(model: GPTNeoXForCausalLM, blocks: Blocks, steps: int, settings: LMSettings,
             seed: int, progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Train with AdamW (0.9, 0.95) and warmup + cosine (Pythia's recipe, lr floor omitted) for
    ``steps`` batches drawn by epochs over shuffled blocks; returns the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = build_optimizer(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                betas=(0.9, 0.95))
    scheduler = warmup_cosine(optimizer, min(steps, max(1, round(settings.warmup_frac * steps))), steps)
    model.train()
    losses: list[float] = []
    order = torch.zeros(0, dtype=torch.long)
    for step in range(steps):
        if len(order) < settings.batch_size:
            order = torch.cat([order, torch.randperm(len(blocks.ids), generator=generator)])
        take, order = order[:settings.batch_size], order[settings.batch_size:]
        ids, mask = blocks.ids[take], blocks.mask[take]
        labels = ids.masked_fill(~mask, -100)
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps)
    return losses


@torch.no_grad()
def accumulate_loss(model: GPTNeoXForCausalLM, blocks: Blocks, vocab_size: int,
                    batch_size: int = 32) -> LossAccumulator:
    """Eq. 5.3: per piece, the sum over its occurrences in ``blocks`` of CE(M(x_<t), x_t)."""
    model.eval()
    acc = LossAccumulator(vocab_size)
    for lo in range(0, len(blocks.ids), batch_size):
        ids, mask = blocks.ids[lo:lo + batch_size], blocks.mask[lo:lo + batch_size]
        logits = model(input_ids=ids, attention_mask=mask.long()).logits
        acc.update_from_logits(logits, ids, mask)
    return acc


def steps_for(n_tokens: int, settings: LMSettings) -> int:
    """Optimizer steps that consume about ``n_tokens`` predicted tokens."""
    return max(1, math.ceil(n_tokens / (settings.batch_size * (settings.seq_len - 1))))


def piece_lm_loss(model_proto: bytes, train_texts: Sequence[str], score_texts: Sequence[str],
                  train_tokens: int, settings: LMSettings, seed: int, alpha: float = 0.1,
                  progress: Callable[[int, int], None] | None = None) -> tuple[LossAccumulator, list[float]]:
    """One ADAT round's LM term: a fresh GPT-NeoX with one embedding row per piece of
    ``model_proto``, trained on ``train_tokens`` sampled-segmentation tokens, then scored on the
    Viterbi segmentation of ``score_texts``. Returns the accumulator and the training losses.

    The sampled segmentation is a pure function of (``seed``, texts, pieces, ``alpha``)
    (§5.3.2.1 sampling by our FFBS), so the round gives the same LM in any process."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    sep = sp.eos_id()
    sampler = SegmentationSampler.from_proto(model_proto, alpha)
    # Large chunks: the sampler's per-call cost is numpy work, cheaper per text in big batches.
    train_ids = sampled_stream(sampler.encoder(np.random.default_rng(seed)), train_texts, sep, train_tokens,
                               chunk=2048)
    train_blocks = pack(train_ids, settings.seq_len, sep, keep_partial=False)
    model = build_causal_lm(settings.preset, sp.get_piece_size(), seed=seed)
    losses = train_lm(model, train_blocks, steps_for(train_tokens, settings), settings, seed, progress)
    score_blocks = pack(stream(sp_encoder(sp), score_texts, sep), settings.seq_len, sep)
    return accumulate_loss(model, score_blocks, sp.get_piece_size(), settings.eval_batch_size), losses
