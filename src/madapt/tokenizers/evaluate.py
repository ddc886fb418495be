"""Compare tokenizers by training the same LM with each (seed 000 §5.4.1.4, §5.4.7; issue 5 item 6).

Fairness rules (reference notes §7): every tokenizer's LM is trained from scratch on the same
training text with the same preset, batch, learning rate and, by default, the same number of
optimizer steps (`equal_steps`: a finer tokenizer would otherwise get more steps out of the same
text, the confound that gave ADAT about 10 % more steps than Unigram at micro scale); the
``bytes`` protocol instead trains every LM for the same passes over the same bytes (the paper's
one epoch over a fixed corpus). All LMs are scored on the same held-out text with Viterbi
(deterministic) segmentation. Reported:

* bits per byte = total NLL (nats) / ln 2 / UTF-8 bytes, the comparison that is fair across
  vocabularies. Every held-out document is followed by a separator token whose NLL counts, and
  which is charged one byte (the newline it stands for);
* token perplexity exp(NLL / tokens), the paper's metric, NOT comparable across vocabularies (a
  finer segmentation divides the same NLL by more tokens);
* compression: UTF-8 bytes per token (higher = shorter sequences);
* vocabulary overlap (eq. 5.6): |A ∩ B| / |A ∪ B| over piece strings.

Baselines at the target size: Unigram (sentencepiece) and byte-level BPE (Hugging Face
``tokenizers``), and BytePiece (`tokenizers.bytepiece`). All sentencepiece models use the
lossless normaliser of `tokenizers.units` and byte fallback, so decode(encode(text)) == text.

The held-out text is streamed (encoded, packed and scored a chunk at a time). Under
``accelerate launch`` each evaluation LM trains like the scoring LM of `lm_scoring`: every process
takes its shard of each batch with gradients averaged, and the held-out NLL is summed over shards.

Optionally (§5.4.1.4: five-shot lm-evaluation-harness tasks), each trained LM is also run through
lm-evaluation-harness (`run_lm_eval`). That package is an optional extra imported only when a
config asks for tasks; its datasets download from the Hugging Face Hub at run time, so offline a
task fails with one line naming it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sentencepiece as spm

from madapt.backbones.causal_lm import build_causal_lm
from madapt.errors import ConfigError, DataError
from madapt.tokenizers.lm_scoring import (
    Blocks,
    Encode,
    LMSettings,
    accumulate_loss,
    encode_chunks,
    iter_blocks,
    pack,
    sp_encoder,
    train_lm,
)
from madapt.tokenizers.unigram import read_model_proto
from madapt.tokenizers.units import rule_files
from madapt.training import Processes
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BPE_SEPARATOR = "<|endoftext|>"


@dataclass
class Candidate:
    """A tokenizer under comparison: batch encoder, vocabulary size, separator id, piece strings."""

    name: str
    encode: Encode
    vocab_size: int
    sep_id: int
    pieces: frozenset[str]
    hf_tokenizer: Callable[[], Any] | None = None  # a transformers tokenizer, for lm-eval


@dataclass(frozen=True)
class LMEvalSpec:
    """lm-evaluation-harness tasks to run on every trained LM (§5.4.1.4: five-shot)."""

    tasks: tuple[str, ...]
    num_fewshot: int = 5
    limit: int | None = None
    batch_size: int = 8
    data_root: str | None = None  # a Hugging Face cache with the tasks' datasets, read offline


def check_data_root(data_root: str) -> None:
    """A missing lm-eval data folder is a one-line `DataError`."""
    if not Path(data_root).is_dir():
        raise DataError(
            f"evaluate.lm_eval.data_root '{data_root}'",
            "is not a folder",
            "a Hugging Face cache folder with the tasks' datasets (lm-eval's offline guide)",
        )


@contextlib.contextmanager
def offline_datasets(data_root: str | None) -> Iterator[None]:
    """Point the Hugging Face datasets/hub caches at ``data_root`` and forbid downloads while
    lm-eval runs (restored afterwards); a missing folder is a one-line `DataError`."""
    if data_root is None:
        yield
        return
    check_data_root(data_root)
    names = {
        "HF_DATASETS_CACHE": data_root,
        "HF_HUB_CACHE": str(Path(data_root) / "hub"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    before = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


LM_EVAL_EXTRA = "pip install 'madapt[lm-eval]'"


def require_lm_eval(where: str = "evaluate.lm_eval") -> ModuleType:
    """``lm_eval``, imported lazily; not installed is a one-line `ConfigError` naming the extra."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(
            where,
            "asks for lm-evaluation-harness tasks but the lm-eval package is not installed",
            f"`{LM_EVAL_EXTRA}`, or no lm_eval section",
        ) from None
    return lm_eval


def _is_download_failure(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) is a failed dataset download/lookup: no network, no Hub
    access, no local copy. Matched by exception family, since lm-eval, datasets and
    huggingface_hub raise their own classes (all of them OSError or from those packages)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):  # ConnectionError, TimeoutError, FileNotFoundError, HTTP errors
            return True
        roots = {cls.__module__.split(".")[0] for cls in type(seen).__mro__}
        if roots & {"datasets", "huggingface_hub", "requests", "urllib3", "fsspec", "aiohttp"}:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def run_lm_eval(model: Any, tokenizer: Any, spec: LMEvalSpec, max_length: int) -> dict[str, dict[str, float]]:
    """Numeric metrics per task of ``lm_eval.simple_evaluate`` on an in-memory model (HFLM wraps a
    model object, no download of weights). Tasks run one at a time so that a dataset that cannot
    be downloaded (offline) becomes a `DataError` naming its task."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size, max_length=max_length)
    out: dict[str, dict[str, float]] = {}
    for task in spec.tasks:
        try:
            with offline_datasets(spec.data_root):
                result = lm_eval.simple_evaluate(
                    model=lm, tasks=[task], num_fewshot=spec.num_fewshot, limit=spec.limit
                )
        except Exception as err:
            if not _is_download_failure(err):
                raise
            detail = " ".join(str(err).split())[:100]
            where = f" in data_root {spec.data_root}" if spec.data_root else " (offline?)"
            raise DataError(
                f"lm-eval task '{task}'",
                f"its dataset could not be loaded ({type(err).__name__}: {detail}){where}",
                "Hugging Face Hub access, or a local copy of the dataset (lm-eval's offline guide)",
            ) from None
        metrics = result["results"].get(task, {})
        out[task] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return out


MAX_DOCUMENT_BYTES = 1 << 24


def train_unigram(
    texts: Iterable[str],
    vocab_size: int,
    *,
    character_coverage: float = 0.9995,
    max_piece_length: int = 16,
    num_threads: int = 2,
    where: str = "corpus",
    hard_vocab_limit: bool = True,
) -> bytes:
    """A sentencepiece Unigram ``.model`` (serialized) with byte fallback, the lossless normaliser of
    `units` (identity, U+2581 escaped, no dummy prefix, spaces kept) and specials <unk> <s> </s>
    <pad> at ids 0-3.

    ``texts`` may be a stream; sentencepiece keeps what it reads. A corpus too small for
    ``vocab_size`` becomes a `DataError` naming ``where``.
    """
    buffer = io.BytesIO()
    try:
        with rule_files() as normalizer:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=buffer,
                model_type="unigram",
                vocab_size=vocab_size,
                byte_fallback=True,
                character_coverage=character_coverage,
                max_sentencepiece_length=max_piece_length,
                # sentencepiece silently skips longer "sentences" (default 4192 bytes): whole Pile
                # documents are longer, and our Unigram model counts them whole
                max_sentence_length=MAX_DOCUMENT_BYTES,
                num_threads=num_threads,
                minloglevel=2,
                pad_id=3,
                hard_vocab_limit=hard_vocab_limit,
                **normalizer,
            )
    except RuntimeError as err:
        detail = " ".join(str(err).split())[-120:]
        if "Vocabulary size too high" not in detail:
            raise DataError(
                where, f"sentencepiece cannot train on it ({detail})", "a usable text corpus"
            ) from None
        raise DataError(
            where,
            f"too small to train a {vocab_size}-piece Unigram vocabulary (sentencepiece: {detail})",
            "more text, or a smaller vocabulary size",
        ) from None
    return without_rule_paths(buffer.getvalue())


def lossless_template() -> bytes:
    """A tiny `train_unigram` model, for its specs alone (normaliser, specials, byte fallback):
    the template of vocabularies built another way (`bytepiece.to_model_proto`)."""
    return train_unigram(["a"], 300, character_coverage=1.0, num_threads=1, hard_vocab_limit=False)


def without_rule_paths(model_proto: bytes) -> bytes:
    """The ModelProto without the (temporary) rule file names sentencepiece records: the compiled
    rules are what it uses, and the bytes must not depend on where the files were."""
    proto = read_model_proto(model_proto)
    proto.normalizer_spec.ClearField("normalization_rule_tsv")
    proto.denormalizer_spec.ClearField("normalization_rule_tsv")
    return proto.SerializeToString()


def sentencepiece_candidate(name: str, proto: bytes) -> Candidate:
    sp = spm.SentencePieceProcessor(model_proto=proto)
    pieces = frozenset(sp.id_to_piece(i) for i in range(sp.get_piece_size()))

    def hf() -> Any:
        from madapt.tokenizers.export import hf_pretrained

        return hf_pretrained(proto)

    return Candidate(name, sp_encoder(sp), sp.get_piece_size(), sp.eos_id(), pieces, hf)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2/Pythia style) with ``vocab_size`` entries including 256 bytes and the
    separator; fewer when the text has too few pairs to merge."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_SEPARATOR],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def bpe_candidate(name: str, tok: Tokenizer) -> Candidate:
    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts)]

    def hf() -> Any:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=BPE_SEPARATOR)

    return Candidate(
        name, encode, tok.get_vocab_size(), tok.token_to_id(BPE_SEPARATOR), frozenset(tok.get_vocab()), hf
    )


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


def train_stream(
    candidate: Candidate, train_texts: Sequence[str], settings: LMSettings
) -> tuple[np.ndarray, Blocks]:
    """The candidate's token stream of ``train_texts`` and its full training blocks."""
    train_ids = np.concatenate(
        [np.zeros(0, np.int64), *encode_chunks(candidate.encode, train_texts, candidate.sep_id)]
    )
    blocks = pack(train_ids, settings.seq_len, candidate.sep_id, keep_partial=False)
    if len(blocks.ids) == 0:
        raise DataError(
            "evaluation training text",
            f"gives {len(train_ids)} tokens with {candidate.name}",
            f"at least one block of {settings.seq_len - 1} tokens",
        )
    return train_ids, blocks


def epoch_steps(n_blocks: int, epochs: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``n_blocks`` training blocks."""
    return max(1, epochs * n_blocks // batch_size)


def equal_steps(
    candidates: Sequence[Candidate], train_texts: Sequence[str], settings: LMSettings, epochs: int
) -> int:
    """One step count for every candidate (the equal-steps protocol): that of ``epochs`` passes for
    the candidate with the fewest tokens, so each LM takes the same number of equal-sized
    batches and none repeats its text more than ``epochs`` times."""
    return min(
        epoch_steps(len(train_stream(c, train_texts, settings)[1].ids), epochs, settings.batch_size)
        for c in candidates
    )


def evaluate(
    candidate: Candidate,
    train_texts: Sequence[str],
    eval_texts: Iterable[str],
    settings: LMSettings,
    epochs: int,
    seed: int,
    lm_eval: LMEvalSpec | None = None,
    processes: Processes = Processes(),
    steps: int | None = None,
) -> dict[str, Any]:
    """Train ``settings.preset`` from scratch on ``train_texts`` with this tokenizer for ``steps``
    optimizer steps (None: ``epochs`` passes over its own token stream) and score ``eval_texts``;
    returns the metrics of the module docstring (plus ``lm_eval`` per-task metrics when
    ``lm_eval`` is given). Batches are drawn by epochs over the shuffled blocks, so with fewer
    steps than an epoch the LM sees a random subset of the text.

    ``eval_texts`` is consumed once, a chunk at a time. Under several processes the LM trains on
    shards of every batch and the held-out NLL is summed over shards (`lm_scoring.train_lm`,
    `lm_scoring.accumulate_loss`); the lm-evaluation-harness tasks run on the main process only
    (its harness wraps one in-memory model), so only the main process's metrics carry them."""
    if lm_eval is not None:
        require_lm_eval()  # before training, not after
    train_ids, blocks = train_stream(candidate, train_texts, settings)
    steps = epoch_steps(len(blocks.ids), epochs, settings.batch_size) if steps is None else steps
    model = build_causal_lm(settings.preset, candidate.vocab_size, seed=seed).to(processes.device)
    losses = train_lm(model, blocks, steps, settings, seed, processes=processes)
    seen = {"bytes": 0, "tokens": 0}

    def counted_texts() -> Iterator[str]:
        for text in eval_texts:
            seen["bytes"] += text_bytes([text])
            yield text

    def counted_chunks() -> Iterator[np.ndarray]:
        for ids in encode_chunks(candidate.encode, counted_texts(), candidate.sep_id):
            seen["tokens"] += len(ids)
            yield ids

    eval_blocks = iter_blocks(counted_chunks(), settings.seq_len, candidate.sep_id)
    acc = accumulate_loss(model, eval_blocks, candidate.vocab_size, settings.eval_batch_size, processes)
    nll = float(acc.total.sum())
    n_bytes, n_tokens = seen["bytes"], seen["tokens"]
    extra: dict[str, Any] = {}
    if lm_eval is not None and processes.is_main:
        if candidate.hf_tokenizer is None:
            raise ValueError(f"candidate {candidate.name} has no transformers tokenizer for lm-eval")
        extra["lm_eval"] = run_lm_eval(model, candidate.hf_tokenizer(), lm_eval, settings.seq_len)
    return {
        **extra,
        "vocab_size": candidate.vocab_size,
        "bits_per_byte": bits_per_byte(nll, n_bytes),
        "token_ppl": math.exp(nll / n_tokens),
        "bytes_per_token": n_bytes / n_tokens,
        "train_tokens": len(train_ids),
        "train_steps": steps,
        "train_tokens_seen": steps * settings.batch_size * (settings.seq_len - 1),
        "train_epochs_seen": steps * settings.batch_size / len(blocks.ids),
        "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
        "eval_tokens": n_tokens,
        "eval_bytes": n_bytes,
    }
