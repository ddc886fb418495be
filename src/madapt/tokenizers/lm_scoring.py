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

Scale (§5.4.2: 0.3B training and 0.1B scoring tokens per round, §5.4.7.1: on 8 GPUs): a round
reads its training text from a `corpus.CyclicReader` up to the token budget only (`take_tokens`),
and the held-out text is encoded, packed and scored a chunk at a time (`encode_chunks`,
`iter_blocks`), so memory follows the round's budget, not the corpus. Under ``accelerate launch``
(`madapt.training.Processes`) every process builds the same round stream and model, trains on its
shard of every global batch with gradients averaged (`train_lm`), scores its shard of the held-out
blocks, and the per-piece sums and counts are summed over processes (`accumulate_loss`): the
result is the single-process one up to float summation order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm
import torch
from transformers import GPTNeoXForCausalLM

from madapt.backbones.causal_lm import build_causal_lm
from madapt.tokenizers.corpus import CyclicReader
from madapt.tokenizers.evidence import EvidenceSearch, find_evidence
from madapt.tokenizers.sampling import SegmentationSampler, calibrate_alpha
from madapt.tokenizers.scoring import LossAccumulator
from madapt.training import Processes, build_optimizer, warmup_cosine

Encode = Callable[[list[str]], list[list[int]]]
# Flat batch encoder: all ids concatenated and each text's id count (`SegmentationSampler.sample_flat`).
FlatEncode = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


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


def pack(ids: Sequence[int] | np.ndarray, seq_len: int, sep_id: int, keep_partial: bool = True) -> Blocks:
    """Blocks of ``[sep] + ids[k(T-1):(k+1)(T-1)]``; see the module docstring."""
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    body = seq_len - 1
    flat = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    n_full, rest = divmod(len(flat), body)
    n = n_full + (1 if rest and keep_partial else 0)
    out = torch.full((n, seq_len), sep_id, dtype=torch.long)
    mask = torch.zeros((n, seq_len), dtype=torch.bool)
    out[:n_full, 1:] = flat[: n_full * body].view(n_full, body)
    mask[:n_full] = True
    if n > n_full:
        out[n_full, 1 : 1 + rest] = flat[n_full * body :]
        mask[n_full, : 1 + rest] = True
    return Blocks(out, mask)


def encode_chunks(
    encode: Encode, texts: Iterable[str], sep_id: int, chunk: int = 2048
) -> Iterator[np.ndarray]:
    """`stream` of ``texts`` ``chunk`` documents at a time, so a long text source is never held whole."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == chunk:
            yield np.asarray(stream(encode, batch, sep_id), dtype=np.int64)
            batch = []
    if batch:
        yield np.asarray(stream(encode, batch, sep_id), dtype=np.int64)


def iter_blocks(
    chunks: Iterable[np.ndarray], seq_len: int, sep_id: int, keep_partial: bool = True
) -> Iterator[Blocks]:
    """`pack` of the concatenated ``chunks``, yielded as groups of blocks as soon as they fill:
    the groups stacked are ``pack(concatenation)``, while at most one chunk is in memory."""
    body = seq_len - 1
    rest = np.zeros(0, np.int64)
    for chunk in chunks:
        rest = np.concatenate([rest, chunk])
        n = len(rest) // body * body
        if n:
            yield pack(rest[:n], seq_len, sep_id, keep_partial=False)
            rest = rest[n:]
    if len(rest) and keep_partial:
        yield pack(rest, seq_len, sep_id)


def take_tokens(
    reader: CyclicReader,
    encode: FlatEncode,
    sep_id: int,
    n_tokens: int,
    first_chunk: int = 64,
    max_chunk: int = 2048,
) -> tuple[np.ndarray, int]:
    """Exactly ``n_tokens`` ids of the documents from ``reader``'s cursor on, each followed by
    ``sep_id``, and the number of documents consumed (the last one possibly cut short).

    Documents are encoded in chunks that double from ``first_chunk`` (a small budget encodes
    little) to ``max_chunk`` (the sampler is cheaper per text in big batches); documents encoded
    beyond the budget are handed back to ``reader`` for the next round. Every pass over the source
    is encoded anew, so with a sampling encoder a wrapped-around document gets a new segmentation.
    """
    parts: list[np.ndarray] = []
    have = used = 0
    chunk = first_chunk
    while have < n_tokens:
        texts = reader.peek(chunk)
        ids, counts = encode(texts)
        ends = np.cumsum(counts + 1)  # stream position after each document's separator
        k = min(len(texts), int(np.searchsorted(ends, n_tokens - have)) + 1)
        parts.append(np.insert(ids, np.cumsum(counts), sep_id)[: ends[k - 1]])
        reader.advance(k)
        used += k
        have += int(ends[k - 1])
        chunk = min(2 * chunk, max_chunk)
    return np.concatenate(parts)[:n_tokens], used


def batch_rows(n_blocks: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """Block indices of every global batch: consecutive slices of per-epoch permutations drawn
    from a generator seeded by ``seed`` (the same in every process, which then takes its shard)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.zeros(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n_blocks, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def train_lm(
    model: GPTNeoXForCausalLM,
    blocks: Blocks,
    steps: int,
    settings: LMSettings,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    processes: Processes = Processes(),
) -> list[float]:
    """Train with AdamW (0.9, 0.95) and warmup + cosine (Pythia's recipe, lr floor omitted) for
    ``steps`` batches drawn by epochs over shuffled blocks; returns the loss of every step.

    Several processes (seed 000 §5.4.7.1 trains on 8 GPUs) each take their contiguous shard of
    every global batch; their mean losses are weighted by their share of the batch's predicted
    tokens before `Processes.mean_grads`, so the averaged gradient is that of the global batch's
    mean loss even when the batch does not split evenly. The returned losses are global too.
    """
    device = next(model.parameters()).device
    optimizer = build_optimizer(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.95)
    )
    scheduler = warmup_cosine(optimizer, min(steps, max(1, round(settings.warmup_frac * steps))), steps)
    model.train()
    shares: list[float] = []  # this process's part of each step's global mean loss
    for step, take in enumerate(batch_rows(len(blocks.ids), settings.batch_size, steps, seed)):
        n_global = int(blocks.mask[take][:, 1:].sum())
        mine = take[processes.shard(len(take))]
        ids, mask = blocks.ids[mine].to(device), blocks.mask[mine].to(device)
        n_local = int(mask[:, 1:].sum())
        if n_local:
            labels = ids.masked_fill(~mask, -100)
            mean = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
            loss = mean * (n_local * processes.world / n_global)  # exactly `mean` in one process
        else:  # an empty shard still joins the gradient average, with zeros
            mean = loss = sum((p * 0).sum() for p in model.parameters())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        processes.mean_grads(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        shares.append(float(mean.detach()) * n_local / n_global)
        if progress is not None:
            progress(step + 1, steps)
    return processes.sum(shares)


@torch.no_grad()
def accumulate_loss(
    model: GPTNeoXForCausalLM,
    blocks: Blocks | Iterable[Blocks],
    vocab_size: int,
    batch_size: int = 32,
    processes: Processes = Processes(),
) -> LossAccumulator:
    """Eq. 5.3: per piece, the sum over its occurrences in ``blocks`` of CE(M(x_<t), x_t).

    ``blocks`` is one `Blocks` or a stream of them (`iter_blocks`). Each process scores its
    contiguous shard of every group and the per-piece sums and counts are summed over processes,
    so every process returns the totals of the whole held-out text (on the CPU).
    """
    model.eval()
    device = next(model.parameters()).device
    acc = LossAccumulator(vocab_size, device)
    for group in [blocks] if isinstance(blocks, Blocks) else blocks:
        mine = processes.shard(len(group.ids))
        for lo in range(mine.start, mine.stop, batch_size):
            hi = min(mine.stop, lo + batch_size)
            ids, mask = group.ids[lo:hi].to(device), group.mask[lo:hi].to(device)
            logits = model(input_ids=ids, attention_mask=mask.long()).logits
            acc.update_from_logits(logits, ids, mask)
    total, count = acc.total.cpu(), acc.count.cpu()
    if processes.world > 1:
        summed = processes.sum(total.tolist() + count.tolist())  # float64: counts stay exact below 2**53
        total = torch.tensor(summed[:vocab_size], dtype=torch.float64)
        count = torch.tensor(summed[vocab_size:], dtype=torch.float64).round().to(torch.int64)
    acc.total, acc.count = total, count
    return acc


def steps_for(n_tokens: int, settings: LMSettings) -> int:
    """Optimizer steps that consume about ``n_tokens`` predicted tokens."""
    return max(1, math.ceil(n_tokens / (settings.batch_size * (settings.seq_len - 1))))


@dataclass
class RoundLM:
    """What one round's LM measured (eq. 5.3): the scoring slice's per-piece sums, the evidence
    text's (`evidence`; None when no piece needed it or no unseen text held it), the training
    losses, and the sampling α with the sampled/Viterbi length ratio of the round's training text."""

    acc: LossAccumulator
    losses: list[float]
    evidence: LossAccumulator | None
    evidence_docs: int
    alpha: float
    calibration_ratio: float | None
    length_ratio: float


def piece_lm_loss(
    model_proto: bytes,
    train_texts: CyclicReader | Sequence[str],
    score_texts: Iterable[str],
    train_tokens: int,
    settings: LMSettings,
    seed: int,
    alpha: float | None = 0.1,
    max_length_ratio: float = 1.2,
    calibration_docs: int = 256,
    evidence: EvidenceSearch | None = None,
    progress: Callable[[int, int], None] | None = None,
    processes: Processes = Processes(),
) -> RoundLM:
    """One ADAT round's LM term: a fresh GPT-NeoX with one embedding row per piece of
    ``model_proto``, trained on ``train_tokens`` sampled-segmentation tokens, then scored on the
    Viterbi segmentation of ``score_texts`` and, with ``evidence``, of unseen training documents
    holding the pieces the slice lacks (`evidence.find_evidence`).

    ``alpha=None`` calibrates α on the round's first ``calibration_docs`` documents so that the
    sampled segmentation stays within ``max_length_ratio`` of Viterbi's length
    (`sampling.calibrate_alpha`); the ratio over all the round's sampled documents is returned.
    ``train_texts`` is a reader at the round's cursor (it is left after the documents used, where
    the next round starts, §5.4.2) or a list read from its start; ``score_texts`` is consumed once,
    chunk by chunk. The sampled segmentation is a pure function of (``seed``, texts, pieces, α)
    (§5.3.2.1 sampling by our FFBS), so the round gives the same LM in any process; every process
    samples the whole round's text and trains on its shard of each batch."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    sep = sp.eos_id()
    reader = train_texts if isinstance(train_texts, CyclicReader) else CyclicReader.over(train_texts)
    calibration_ratio = None
    if alpha is None:
        alpha, calibration_ratio = calibrate_alpha(
            model_proto, reader.peek(calibration_docs), max_length_ratio, seed
        )
    sampler = SegmentationSampler.from_proto(model_proto, alpha)
    rng = np.random.default_rng(seed)
    lengths = {"sampled": 0, "viterbi": 0}

    def sample(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, counts = sampler.sample_flat(texts, rng)
        lengths["sampled"] += int(counts.sum())
        lengths["viterbi"] += sum(len(v) for v in sp.encode(texts))
        return ids, counts

    consumed = reader.consumed
    train_ids, _ = take_tokens(reader, sample, sep, train_tokens)
    train_blocks = pack(train_ids, settings.seq_len, sep, keep_partial=False)
    model = build_causal_lm(settings.preset, sp.get_piece_size(), seed=seed).to(processes.device)
    steps = steps_for(train_tokens, settings)
    losses = train_lm(model, train_blocks, steps, settings, seed, progress, processes)
    score_blocks = iter_blocks(encode_chunks(sp_encoder(sp), score_texts, sep), settings.seq_len, sep)
    acc = accumulate_loss(model, score_blocks, sp.get_piece_size(), settings.eval_batch_size, processes)
    evidence_acc, docs = None, []
    if evidence is not None:
        missing = evidence.wanted & (acc.count.numpy() == 0)
        unseen = max(0, evidence.pass_docs - (reader.consumed - consumed))
        budget = int(evidence.token_fraction * acc.count.sum())
        docs = find_evidence(missing, sp_encoder(sp), reader.lookahead(unseen), budget)
        if docs:
            blocks = iter_blocks(encode_chunks(sp_encoder(sp), docs, sep), settings.seq_len, sep)
            evidence_acc = accumulate_loss(
                model, blocks, sp.get_piece_size(), settings.eval_batch_size, processes
            )
    ratio = lengths["sampled"] / max(lengths["viterbi"], 1)
    return RoundLM(acc, losses, evidence_acc, len(docs), float(alpha), calibration_ratio, ratio)
