"""Recipe ``kind: adat``: adaptive tokenizers pruned with the LM's own loss (seed 000 ch. 5).

Pipeline (Fig. 5.1, §5.4.2): a large initial vocabulary is trained on the corpus (sentencepiece
Unigram, or BytePiece for Table 5.1's "ADAT+By", `tokenizers.bytepiece`); each round computes
every piece's Viterbi count and Unigram removal loss a (eq. 5.2) in one pass
(`unigram_round.round_stats`), trains a fresh GPT-NeoX on sampled segmentations (α calibrated so
the sampled text stays within ``max_length_ratio`` of Viterbi's length, reported per round) and
sums every piece's cross-entropy on a held-out slice (b, eq. 5.3); pieces the slice lacks are
scored on training text the round's LM never read, and those with no evidence at all are kept
out of the LM ranking (`tokenizers.evidence`). a and b are combined with the balance function and
momentum (eqs. 5.4-5.5), the lowest-scoring non-required pieces pruned down to the round's size,
the scores re-estimated by EM and the next round's ``.model`` exported. Finally every variant
(ablations of Table 5.5 are variants) is compared with the Unigram, BPE and BytePiece baselines
at the same vocabulary size by training the same LM on the same text for the same number of
steps (`tokenizers.evaluate`).

Corpus (`tokenizers.corpus`): the file is streamed in order, never loaded. Evaluation and
scoring documents are held out by position (fixed, disjoint from the training text); the initial
vocabulary, the word counts behind the removal loss and EM, and the baselines see every training
document or a seeded ``unigram_docs`` sample; each round's LM reads ``round_train_tokens`` from
where the previous round stopped, wrapping around (§5.4.2: each round trains on another fifth of
the corpus). Memory follows the round's budget and that sample, not the corpus.

Several processes (``accelerate launch``, §5.4.7.1's 8 GPUs; `madapt.training.Processes`): each
LM, scoring and evaluation, trains on every process's shard of each global batch with gradients
averaged, and held-out losses are summed over shards; the Unigram side (removal loss, pruning,
EM, baselines) runs identically in every process and is checked to agree. Only the main process
writes (checkpoints, exports, evaluation files, results). Results equal a single-process run's up
to float summation order.

Resume: a checkpoint after each round holds the current model proto (uint8 tensor), the momentum
values aligned to its pieces, the round index, the training-text cursor, the RNG states and the
round history. Every round reseeds torch, the LM initialisation and the segmentation sampler from
``seed`` and the round index. The sampler is our own FFBS (`sampling.SegmentationSampler`)
driven by a numpy generator, not sentencepiece's (whose draws differ between processes), so a
run resumed in a new process after a kill prunes exactly like an uninterrupted run (tested
across subprocesses).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from rich.console import Console

from madapt.config import Recipe, register_recipe
from madapt.errors import ConfigError, DataError
from madapt.runs import Checkpointer, RunFolder, atomic_write_json, rng_state, set_rng_state
from madapt.tokenizers import evaluate as ev
from madapt.tokenizers.adat_config import AdatConfig, VariantConfig
from madapt.tokenizers.adat_report import report, seed_summary
from madapt.tokenizers.bytepiece import bytepiece_model
from madapt.tokenizers.corpus import PARTS, CorpusCounts, CorpusStream, HeldOut, reservoir_sample
from madapt.tokenizers.evidence import EvidenceSearch, lm_term, prune_by_evidence
from madapt.tokenizers.export import export, model_proto
from madapt.tokenizers.lm_scoring import piece_lm_loss
from madapt.tokenizers.scoring import adat_score, carry_over, momentum
from madapt.tokenizers.unigram import UnigramModel, WordCorpus, word_counts
from madapt.tokenizers.unigram_round import reestimate_scores, round_stats
from madapt.tokenizers.units import sp_normalizer, unit_mode
from madapt.training import Processes, join_processes


@dataclass
class Prepared:
    """The streamed corpus and what every round reuses. No corpus text is held except the
    optional bounded ``unigram_docs`` sample (``sample``; None = stream every training document)."""

    corpus: CorpusStream
    counts: CorpusCounts
    words: WordCorpus
    initial_proto: bytes
    seconds: float
    sample: list[str] | None = None

    def vocab_texts(self) -> Iterable[str]:
        return vocab_texts(self.corpus, self.sample)


def vocab_texts(corpus: CorpusStream, sample: list[str] | None) -> Iterable[str]:
    """The training text the Unigram statistics and the baseline vocabularies are fitted on."""
    return iter(sample) if sample is not None else corpus.texts("train")


def prepare(cfg: AdatConfig) -> Prepared:
    """Count and split the streamed corpus and train the initial vocabulary (for the first of
    ``seeds``, if given); every user-input error is here. Each process of a multi-process run
    prepares the same (deterministic) result."""
    if cfg.seeds is not None:
        cfg = cfg.seeded(cfg.seeds[0])
    start = time.perf_counter()
    if cfg.evaluate.enabled and cfg.evaluate.lm_eval is not None:
        ev.require_lm_eval()  # fail in one line now, not after the rounds
        if cfg.evaluate.lm_eval.data_root is not None:
            ev.check_data_root(cfg.evaluate.lm_eval.data_root)
    corpus = CorpusStream(
        cfg.corpus, cfg.max_corpus_bytes, HeldOut.seeded(cfg.eval_fraction, cfg.score_fraction, cfg.seed)
    )
    counts = corpus.count()
    stats = counts.stats
    if stats.kept < 10:
        raise DataError(
            f"corpus '{cfg.corpus}'",
            f"has {stats.kept} usable lines ({stats.n_skipped} skipped)",
            "at least 10 non-empty UTF-8 documents",
        )
    empty = [part for part in PARTS if counts.docs[part] == 0]
    if empty:
        raise DataError(
            f"corpus '{cfg.corpus}'",
            f"leaves no {empty[0]} documents among its {stats.kept}",
            "more documents, or larger eval_fraction/score_fraction",
        )
    sample = None
    if cfg.unigram_docs is not None:
        sample = reservoir_sample(corpus.texts("train"), cfg.unigram_docs, cfg.seed)
    if cfg.initial == "bytepiece":
        proto = bytepiece_model(
            vocab_texts(corpus, sample), cfg.initial_vocab, ev.lossless_template(), cfg.bytepiece.settings()
        )
    else:
        proto = ev.train_unigram(
            vocab_texts(corpus, sample),
            cfg.initial_vocab,
            num_threads=2,
            character_coverage=cfg.character_coverage,
            where=f"corpus '{cfg.corpus}'",
        )
    required = int(UnigramModel.from_sentencepiece(proto).required_mask().sum())
    if required > cfg.target_vocab:
        raise ConfigError(
            "target_vocab",
            f"{cfg.target_vocab} is below the {required} required pieces "
            "(specials, 256 bytes, every character)",
            f"at least {required}",
        )
    pieces = UnigramModel.from_sentencepiece(proto).pieces
    words = word_counts(vocab_texts(corpus, sample), sp_normalizer(proto), unit_mode(pieces))
    return Prepared(corpus, counts, words, proto, time.perf_counter() - start, sample)


def same_everywhere(processes: Processes, blob: bytes, what: str) -> None:
    """Fail loudly when processes that must hold identical bytes do not.

    Vocabularies are computed by every process from identical inputs with deterministic code
    rather than broadcast; a divergence (which would make the processes average gradients of
    different models) is caught by comparing CRC-32s, summed exactly in float64.
    """
    if processes.world == 1:
        return
    crc = zlib.crc32(blob)
    if processes.sum([float(crc)])[0] != crc * processes.world:
        raise RuntimeError(
            f"{what} differs between the {processes.world} processes "
            f"(CRC-32 {crc} on rank {processes.rank}); they must compute the same bytes"
        )


def _summary(values: np.ndarray) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    q = np.quantile(finite, [0.1, 0.5, 0.9]) if finite.size else [float("nan")] * 3
    return {
        "p10": float(q[0]),
        "median": float(q[1]),
        "p90": float(q[2]),
        "n_inf": int((~np.isfinite(values)).sum()),
    }


def run_rounds(
    cfg: AdatConfig,
    variant: VariantConfig,
    data: Prepared,
    checkpoints: Checkpointer,
    on_round: Callable[[int, dict[str, Any]], None] | None = None,
    processes: Processes = Processes(),
) -> tuple[bytes, list[dict[str, Any]]]:
    """The pruning loop for one variant; resumes from ``checkpoints``. Returns the final model
    proto and one history entry per round. ``on_round(r, entry)`` runs after round r's checkpoint.

    Round r's LM reads the training documents from the cursor where round r-1 stopped (§5.4.2:
    each round trains on another part of the corpus), wrapping around; round 1 of every variant
    starts at the first training document. The cursor travels in the checkpoint, so a resumed
    run reads the same text. Under several processes all of them run
    this loop: the LM term is shared (`lm_scoring.piece_lm_loss`: sharded batches, summed
    per-piece losses), while the removal loss, score, pruning and EM re-estimation, deterministic
    numpy on identical inputs, run identically in every process instead of being broadcast
    (checked by `same_everywhere` each round). Only the main process saves checkpoints and calls
    ``on_round``."""
    processes.barrier()  # nobody reads a checkpoint the main process could still be replacing
    saved = checkpoints.load()
    if saved is None:
        proto, prev, history, start, cursor = data.initial_proto, None, [], 0, 0
    else:
        proto = bytes(saved.state["proto"].numpy().tobytes())
        history, start = list(saved.state["history"]), int(saved.unit["round"])
        cursor = int(saved.state["train_cursor"])
        pieces = UnigramModel.from_sentencepiece(proto).pieces
        prev = None
        if saved.state["has_momentum"]:
            prev = dict(zip(pieces, saved.state["momentum"].double().numpy()))
        set_rng_state(saved.state["rng"])
    reader = data.corpus.train_reader(cursor)
    for r, size in enumerate(cfg.sizes()[start:], start=start):
        t0, c0 = time.perf_counter(), time.process_time()
        model = UnigramModel.from_sentencepiece(proto)
        seed = cfg.seed + 1009 * (r + 1)
        first_doc, consumed = reader.position, reader.consumed
        stats = round_stats(model, data.words)  # Viterbi counts and removal loss a, one pass
        a, required = stats.loss, model.required_mask()
        search = None
        if cfg.unseen_pieces == "evidence":
            wanted = model.matchable & ~required & (stats.freq > 0)
            search = EvidenceSearch(data.counts.docs["train"], cfg.evidence_fraction, wanted)
        alpha = None if cfg.sampling_alpha == "auto" else cfg.sampling_alpha
        score_texts = first_bytes(data.corpus.texts("score"), cfg.score_bytes)
        lm = piece_lm_loss(
            proto,
            reader,
            score_texts,
            cfg.round_train_tokens,
            cfg.lm.settings(),
            seed,
            alpha=alpha,
            max_length_ratio=cfg.max_length_ratio,
            calibration_docs=cfg.calibration_docs,
            evidence=search,
            processes=processes,
        )
        term = lm_term(lm.acc, lm.evidence, stats.freq, model.matchable)
        # "literal": every piece counts as evidenced, b = 0 where absent (eq. 5.3 as printed).
        evidenced = term.has_evidence if cfg.unseen_pieces == "evidence" else np.ones(len(a), bool)
        previous = None if prev is None else carry_over(prev, model.pieces)
        b = term.b
        if variant.momentum_on == "lm_loss":
            b = momentum(previous, b, variant.beta)  # without evidence: the previous momentum stays
            b = b if previous is None else np.where(evidenced, b, previous)
            prev = dict(zip(model.pieces, b))
        score = adat_score(a, b, variant.balance, variant.lam)
        if variant.momentum_on == "score":
            # Finite stand-ins for ±inf so that β·(+inf) + (−inf) can never give NaN; a piece
            # without evidence keeps its previous momentum (no new L^j to add).
            score = momentum(previous, np.nan_to_num(score, posinf=1e300, neginf=-1e300), variant.beta)
            if previous is not None:
                score = np.where(evidenced, score, previous)
            prev = dict(zip(model.pieces, score))
        keep = prune_by_evidence(model.pieces, score, a, len(model.pieces) - size, required, evidenced)
        pruned = reestimate_scores(model.subset(keep), data.words, cfg.reestimate_iters)
        proto = model_proto(proto, pruned)
        same_everywhere(processes, proto, f"the vocabulary after round {r + 1}")
        lowest = np.flatnonzero(~keep)[np.argsort(score[~keep], kind="stable")]
        history.append(
            {
                "round": r + 1,
                "size_before": len(model.pieces),
                "size_after": len(pruned.pieces),
                "pruned": int((~keep).sum()),
                "lowest_pruned": [model.pieces[i] for i in lowest[:12]],
                "unseen_in_scoring": int((~term.in_slice & model.matchable).sum()),
                "scored_from_evidence": int(term.from_evidence.sum()),
                "evidence_docs": lm.evidence_docs,
                "required": int(required.sum()),
                "without_evidence": int((~evidenced & ~required).sum()),
                "pruned_without_evidence": int((~evidenced & ~keep).sum()),
                "sampling_alpha": lm.alpha,
                "length_ratio": lm.length_ratio,
                "calibration_ratio": lm.calibration_ratio,
                "train_first_doc": first_doc,
                "train_docs": reader.consumed - consumed,
                "lm_train_loss": float(np.mean(lm.losses[-10:])),
                "lm_heldout_loss": float(lm.acc.total.sum() / lm.acc.count.sum()),
                "a": _summary(a),
                "b": _summary(b),
                "score": _summary(score),
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
            }
        )
        if processes.is_main:  # the others hold the same state
            carried = carry_over(prev, pruned.pieces) if prev is not None else np.zeros(len(pruned.pieces))
            checkpoints.save(
                {"round": r + 1},
                {
                    "proto": torch.frombuffer(bytearray(proto), dtype=torch.uint8),
                    "has_momentum": prev is not None,
                    "momentum": torch.from_numpy(carried),
                    "history": history,
                    "rng": rng_state(),
                    "train_cursor": reader.position,
                },
            )
            if on_round is not None:
                on_round(r + 1, history[-1])
    return proto, history


def first_bytes(texts: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    """The documents of ``texts`` up to the one that reaches ``max_bytes`` UTF-8 bytes (all if None)."""
    total = 0
    for text in texts:
        if max_bytes is not None and total >= max_bytes:
            return
        total += len(text.encode("utf-8")) + 1
        yield text


def eval_train_texts(corpus: CorpusStream, max_bytes: int | None) -> list[str]:
    """The evaluation LMs' training text: the training documents from the first, up to
    ``max_bytes`` (UTF-8 plus one per separator; None = all of them, held in memory)."""
    out, total = [], 0
    for text in corpus.texts("train"):
        if max_bytes is not None and total >= max_bytes:
            break
        out.append(text)
        total += len(text.encode("utf-8")) + 1
    return out


def _evaluate_all(
    cfg: AdatConfig,
    data: Prepared,
    protos: dict[str, bytes],
    folder: RunFolder,
    console: Console,
    processes: Processes = Processes(),
) -> dict[str, dict[str, Any]]:
    """Baselines at the target size plus every variant, each LM trained on the same text.

    Every process fits the baselines (deterministic, checked) and trains each LM on its shards;
    the main process alone writes the baselines and the per-tokenizer results."""
    processes.barrier()  # every process sees the same finished evaluations when resuming
    candidates = {name: ev.sentencepiece_candidate(name, p) for name, p in protos.items()}
    if "unigram" in cfg.evaluate.baselines:
        proto = ev.train_unigram(
            data.vocab_texts(), cfg.target_vocab, character_coverage=cfg.character_coverage
        )
        same_everywhere(processes, proto, "the Unigram baseline")
        if processes.is_main:
            export(proto, UnigramModel.from_sentencepiece(proto), folder.path / "baselines" / "unigram")
        candidates["unigram"] = ev.sentencepiece_candidate("unigram", proto)
    if "bytepiece" in cfg.evaluate.baselines:
        proto = bytepiece_model(
            data.vocab_texts(), cfg.target_vocab, ev.lossless_template(), cfg.bytepiece.settings()
        )
        same_everywhere(processes, proto, "the BytePiece baseline")
        if processes.is_main:
            export(proto, UnigramModel.from_sentencepiece(proto), folder.path / "baselines" / "bytepiece")
        candidates["bytepiece"] = ev.sentencepiece_candidate("bytepiece", proto)
    if "bpe" in cfg.evaluate.baselines:
        tok = ev.train_bpe(data.vocab_texts(), cfg.target_vocab)
        same_everywhere(processes, tok.to_str().encode("utf-8"), "the BPE baseline")
        if processes.is_main:
            (folder.path / "baselines" / "bpe").mkdir(parents=True, exist_ok=True)
            tok.save(str(folder.path / "baselines" / "bpe" / "tokenizer.json"))
        candidates["bpe"] = ev.bpe_candidate("bpe", tok)
    train = eval_train_texts(data.corpus, cfg.evaluate.train_bytes)
    settings = (cfg.evaluate.lm or cfg.lm).settings()
    steps = None
    if cfg.evaluate.protocol == "steps":
        steps = ev.equal_steps(list(candidates.values()), train, settings, cfg.evaluate.epochs)
    out: dict[str, dict[str, Any]] = {}
    for name, cand in candidates.items():
        path = folder.path / "eval" / f"{name}.json"
        if path.is_file():  # resumed run: this tokenizer's LM is already trained and scored
            out[name] = json.loads(path.read_text(encoding="utf-8"))
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        console.print(f"evaluating {name} ({cand.vocab_size} pieces)")
        lm_eval = cfg.evaluate.lm_eval.spec() if cfg.evaluate.lm_eval is not None else None
        metrics = ev.evaluate(
            cand,
            train,
            data.corpus.texts("eval"),
            settings,
            cfg.evaluate.epochs,
            cfg.seed,
            lm_eval,
            processes,
            steps=steps,
        )
        metrics.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        if "unigram" in candidates and name != "unigram":
            metrics["overlap_with_unigram"] = ev.vocab_overlap(cand.pieces, candidates["unigram"].pieces)
        if processes.is_main:
            atomic_write_json(path, metrics)
            folder.log(f"eval {name}: {metrics['bits_per_byte']:.4f} bits/byte")
        out[name] = metrics
    return out


def run(cfg: AdatConfig, data: Prepared, folder: RunFolder, console: Console) -> dict[str, Any]:
    """Every variant's rounds, then the evaluation, once (``seed``) or per seed of ``seeds``, each
    in its own ``seed_<s>`` folder (a finished seed is not rerun on resume), with the mean ± std
    over seeds of every tokenizer's metrics (`seed_summary`). Under ``accelerate launch`` every
    process runs this with its `Processes` (the results of the others are discarded); only the
    main process writes into ``folder``."""
    torch.set_num_threads(cfg.threads)
    processes = join_processes()
    if cfg.seeds is None:
        return run_seed(cfg, data, folder, console, processes)
    per_seed: dict[str, Any] = {}
    for k, seed in enumerate(cfg.seeds):
        sub = RunFolder(folder.path / f"seed_{seed}")
        if sub.results_path.is_file():
            per_seed[str(seed)] = sub.read_results()
            continue
        one = cfg.seeded(seed)
        sub.path.mkdir(parents=True, exist_ok=True)
        console.print(f"seed {seed} ({k + 1} of {len(cfg.seeds)})")
        results = run_seed(one, data if k == 0 else prepare(one), sub, console, processes)
        if processes.is_main:
            sub.write_results(results)
        per_seed[str(seed)] = results
    return {"seeds": per_seed, "summary": seed_summary(per_seed)}


def run_seed(
    cfg: AdatConfig, data: Prepared, folder: RunFolder, console: Console, processes: Processes
) -> dict[str, Any]:
    """`run` for one seed."""
    same_everywhere(processes, data.initial_proto, "the initial sentencepiece vocabulary")
    t0, c0 = time.perf_counter(), time.process_time()
    stats, docs = data.counts.stats, data.counts.docs
    results: dict[str, Any] = {
        "corpus": {
            "name": cfg.corpus,
            "documents": stats.kept,
            "bytes": stats.kept_bytes,
            "skipped": stats.skipped,
            "train_docs": docs["train"],
            "score_docs": docs["score"],
            "eval_docs": docs["eval"],
            "unigram_docs": docs["train"] if data.sample is None else len(data.sample),
        },
        "schedule": [cfg.initial_vocab, *cfg.sizes()],
        "variants": {},
        "prepare_seconds": data.seconds,
        "processes": processes.world,
    }
    protos: dict[str, bytes] = {}
    for variant in cfg.variants:
        sub = RunFolder(folder.path / variant.name)

        def log(r: int, entry: dict[str, Any], name: str = variant.name) -> None:
            folder.log(
                f"{name} round {r}: {entry['size_before']} -> {entry['size_after']} pieces, "
                f"held-out LM loss {entry['lm_heldout_loss']:.3f}, {entry['seconds']:.0f} s"
            )
            console.print(
                f"{name} round {r}: {entry['size_before']} -> {entry['size_after']} "
                f"({entry['seconds']:.0f} s, {entry['cpu_seconds']:.0f} s CPU)"
            )

        proto, history = run_rounds(cfg, variant, data, sub.checkpoints, log, processes)
        final = UnigramModel.from_sentencepiece(proto)
        entry: dict[str, Any] = {**variant.model_dump(), "rounds": history, "final_size": len(final.pieces)}
        if processes.is_main:
            sp_path, json_path = export(proto, final, sub.path)
            sp = spm.SentencePieceProcessor(model_file=str(sp_path))  # check the file as written
            entry["roundtrip_lossless"] = all(sp.decode(sp.encode(t)) == t for t in data.corpus.texts("eval"))
            entry["files"] = [sp_path.name, json_path.name]
        results["variants"][variant.name] = entry
        protos[variant.name] = proto
    results["rounds_seconds"] = time.perf_counter() - t0
    results["rounds_cpu_seconds"] = time.process_time() - c0
    if cfg.evaluate.enabled:
        results["evaluation"] = _evaluate_all(cfg, data, protos, folder, console, processes)
        uni = results["evaluation"].get("unigram")
        if uni is not None:
            results["beats_unigram_bpb"] = {
                name: results["evaluation"][name]["bits_per_byte"] < uni["bits_per_byte"] for name in protos
            }
    results["total_seconds"] = time.perf_counter() - t0 + data.seconds
    results["total_cpu_seconds"] = time.process_time() - c0
    return results


register_recipe(Recipe("adat", AdatConfig, prepare, run, report, multiprocess=True))
