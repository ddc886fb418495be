"""Benchmark: one whole ADAT pruning round's Unigram side vs sentencepiece's own Unigram training (issue 16).

Builds deterministic pseudo-natural text (a Zipf-distributed lexicon of real Python docstring
words plus pseudo-words from a seeded character Markov chain over them) and, each in its own
process so that peak memory (``ru_maxrss``) is that phase's alone:

* ``sentencepiece``: the baseline, sentencepiece's Unigram training of the large vocabulary on the
  text (with our lossless normaliser, `tokenizers.units`);
* ``round``: one whole round on that vocabulary and text, as `adat.run_rounds` does it: word
  counting, Viterbi counts and removal loss in one pass (`unigram_round.round_stats`), the ADAT
  score (eq. 5.4, ratio balance; the LM term b is synthetic here, since the LM is timed
  separately below) with pruning by evidence of 20 % of the removable pieces, and two EM
  iterations on the pruned vocabulary (`unigram_round.reestimate_scores`).

Targets (issue 16): a whole round at 150k pieces on 10 MB in <= 60 s on 2 cores and <= 2 GB.
Two more figures on the bundled docstring corpus with the ``adat/micro`` preset's settings
(initial vocabulary, LM preset, sequence length, batch, α):

* ``sampler``: random segmentation (§5.3.2.1) tokens/s of our seeded FFBS sampler (cold cache =
  first pass, warm = later passes) against sentencepiece's ``nbest_size=-1`` sampler called one
  text at a time, as ratios (> 1 = ours faster);
* ``lm_scoring``: tokens/s of the scoring LM's training (eq. 5.3's model) and of the held-out
  per-piece loss accumulation.

    python benchmarks/adat_scoring_bench.py            # ~10 MB, 150k pieces requested
    python benchmarks/adat_scoring_bench.py --quick    # ~1 MB, 20k pieces requested
    python benchmarks/adat_scoring_bench.py --only-lm --quick   # just the sampler and LM figures
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import inspect
import io
import itertools
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from multiprocessing import Queue
from pathlib import Path

import numpy as np
import sentencepiece as spm

ZIPF = 0.7  # lexicon rank exponent: flatter than 1 so 10 MB has a few 100k distinct words
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}


def docstring_words() -> list[str]:
    """Words of the standard library's docstrings (varies with the Python version; fine here)."""
    docs: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name.startswith("_") or name in SKIP_MODULES:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # some modules need a platform or optional C library
                continue
            for obj in [module] + [getattr(module, a, None) for a in sorted(dir(module))]:
                doc = inspect.getdoc(obj) if obj is not None else None
                if doc:
                    docs.append(doc)
    return "\n".join(dict.fromkeys(docs)).split()


def pseudo_words(words: list[str], n: int, order: int, seed: int) -> list[str]:
    """``n`` distinct new words from a character Markov chain of ``order`` over ``words``."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for w in set(words):
        padded = "^" * order + w + "$"
        for i in range(len(w) + 1):
            table[padded[i : i + order]][padded[i + order]] += 1
    chain = {}
    for ctx, counter in table.items():
        chars = sorted(counter)
        chain[ctx] = (chars, list(itertools.accumulate(counter[c] for c in chars)))
    rng, known, out = random.Random(seed), set(words), []
    seen: set[str] = set()
    while len(out) < n:
        ctx, word = "^" * order, []
        while len(word) < 24:
            chars, cum = chain[ctx]
            ch = chars[bisect.bisect_right(cum, rng.random() * cum[-1])]
            if ch == "$":
                break
            word.append(ch)
            ctx = ctx[1:] + ch
        w = "".join(word)
        if w and w not in known and w not in seen:
            seen.add(w)
            out.append(w)
    return out


def make_text(n_bytes: int, n_pseudo: int, seed: int = 0) -> list[str]:
    """Lines of Zipf-sampled words until ``n_bytes`` of UTF-8 text."""
    real = docstring_words()
    lexicon = list(Counter(real)) + pseudo_words(real, n_pseudo, order=3, seed=seed)
    rng = np.random.default_rng(seed)
    lexicon = [lexicon[i] for i in rng.permutation(len(lexicon))]
    weights = 1.0 / np.arange(1, len(lexicon) + 1) ** ZIPF
    lines, size = [], 0
    while size < n_bytes:
        draws = rng.choice(len(lexicon), size=200_000, p=weights / weights.sum())
        cuts = np.cumsum(rng.integers(4, 20, size=len(draws) // 4))
        for chunk in np.split(draws, cuts[cuts < len(draws)]):
            line = " ".join(lexicon[i] for i in chunk)
            lines.append(line)
            size += len(line.encode("utf-8")) + 1
            if size >= n_bytes:
                break
    return lines


def train_sentencepiece(lines: list[str], vocab_size: int, threads: int) -> tuple[bytes, float]:
    buffer = io.BytesIO()
    from madapt.tokenizers.evaluate import without_rule_paths
    from madapt.tokenizers.units import rule_files

    start = time.perf_counter()
    with rule_files() as normalizer:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buffer,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            byte_fallback=True,
            character_coverage=1.0,
            num_threads=threads,
            input_sentence_size=0,
            max_sentence_length=1 << 16,
            minloglevel=2,
            pad_id=3,
            **normalizer,
        )
    return without_rule_paths(buffer.getvalue()), time.perf_counter() - start


def sampler_throughput(proto: bytes, texts: list[str], alpha: float, chunk: int = 2048) -> dict[str, float]:
    """Sampled-segmentation tokens/s: sentencepiece (one text per call, as `lm_scoring.sp_encoder`
    samples) vs `SegmentationSampler` in ``chunk``-text calls (`lm_scoring.take_tokens` grows to 2048)."""
    from madapt.tokenizers.sampling import SegmentationSampler

    sp = spm.SentencePieceProcessor(model_proto=proto)
    spm.set_random_generator_seed(0)
    t0 = time.perf_counter()
    n_sp = sum(len(sp.encode(t, enable_sampling=True, alpha=alpha, nbest_size=-1)) for t in texts)
    sp_rate = n_sp / (time.perf_counter() - t0)
    sampler, rng = SegmentationSampler.from_proto(proto, alpha), np.random.default_rng(0)
    rates = []
    for _ in range(2):  # cold (builds the per-unit tables), then warm (cache hits only)
        t0, n = time.perf_counter(), 0
        for lo in range(0, len(texts), chunk):
            n += len(sampler.sample_flat(texts[lo : lo + chunk], rng)[0])
        rates.append(n / (time.perf_counter() - t0))
    return {
        "texts": len(texts),
        "sentencepiece_tokens": n_sp,
        "ffbs_tokens": n,
        "sentencepiece_tok_per_s": round(sp_rate),
        "ffbs_cold_tok_per_s": round(rates[0]),
        "ffbs_warm_tok_per_s": round(rates[1]),
        "ffbs_cold_over_sentencepiece": round(rates[0] / sp_rate, 3),
        "ffbs_warm_over_sentencepiece": round(rates[1] / sp_rate, 3),
    }


def lm_throughput(
    proto: bytes, train: list[str], held_out: list[str], settings, steps: int, alpha: float
) -> dict[str, float]:
    """Tokens/s of one round's scoring LM: training on sampled segmentations, then eq. 5.3's
    per-piece loss accumulation on the Viterbi-segmented held-out slice."""
    import torch

    from madapt.backbones.causal_lm import build_causal_lm
    from madapt.tokenizers import lm_scoring as lms
    from madapt.tokenizers.corpus import CyclicReader
    from madapt.tokenizers.sampling import SegmentationSampler

    sp = spm.SentencePieceProcessor(model_proto=proto)
    sep, vocab = sp.eos_id(), sp.get_piece_size()
    n_train = steps * settings.batch_size * (settings.seq_len - 1)
    sampler, rng = SegmentationSampler.from_proto(proto, alpha), np.random.default_rng(0)
    ids, _ = lms.take_tokens(CyclicReader.over(train), lambda t: sampler.sample_flat(t, rng), sep, n_train)
    blocks = lms.pack(ids, settings.seq_len, sep, keep_partial=False)
    model = build_causal_lm(settings.preset, vocab, seed=0)
    t0 = time.perf_counter()
    lms.train_lm(model, blocks, steps, settings, seed=0)
    t_train = time.perf_counter() - t0
    held = lms.pack(lms.stream(lms.sp_encoder(sp), held_out, sep), settings.seq_len, sep)
    t0 = time.perf_counter()
    acc = lms.accumulate_loss(model, held, vocab, settings.eval_batch_size)
    t_eval = time.perf_counter() - t0
    return {
        "preset": settings.preset,
        "vocab": vocab,
        "seq_len": settings.seq_len,
        "batch_size": settings.batch_size,
        "torch_threads": torch.get_num_threads(),
        "train_steps": steps,
        "train_tokens": n_train,
        "train_s": round(t_train, 2),
        "train_tok_per_s": round(n_train / t_train),
        "heldout_tokens": held.n_predicted,
        "heldout_s": round(t_eval, 2),
        "heldout_tok_per_s": round(held.n_predicted / t_eval),
        "heldout_mean_ce": round(float(acc.total.sum() / acc.count.sum()), 3),
    }


def micro_figures(quick: bool) -> dict[str, object]:
    """Sampler and LM-scoring throughput with the ``adat/micro`` preset on the bundled corpus."""
    import torch

    from madapt import catalog
    from madapt.config import load_config
    from madapt.data.text import read_texts
    from madapt.tokenizers.evaluate import train_unigram

    catalog.load_all()
    cfg = load_config("adat/micro")
    torch.set_num_threads(cfg.threads)
    texts = read_texts(cfg.corpus)[0]
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    n_held = round(cfg.score_fraction * len(texts))
    held, train = [texts[i] for i in order[:n_held]], [texts[i] for i in order[n_held:]]
    proto = train_unigram(train, cfg.initial_vocab, character_coverage=cfg.character_coverage)
    sample_texts = train[:3000] if quick else train
    settings = cfg.lm.settings()
    alpha = cfg.sampling_alpha
    if alpha == "auto":  # the α round 1 of the preset would use
        from madapt.tokenizers.sampling import calibrate_alpha

        alpha = calibrate_alpha(proto, train[: cfg.calibration_docs], cfg.max_length_ratio, cfg.seed)[0]
    return {
        "sampling_alpha": alpha,
        "sampler": sampler_throughput(proto, sample_texts, alpha),
        "lm_scoring": lm_throughput(
            proto, train, held[:300] if quick else held, settings, steps=10 if quick else 40, alpha=alpha
        ),
    }


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _sentencepiece_phase(text_path: str, vocab: int, threads: int, proto_path: str, out: Queue) -> None:
    lines = Path(text_path).read_text(encoding="utf-8").splitlines()
    c0 = time.process_time()
    proto, seconds = train_sentencepiece(lines, vocab, threads)
    Path(proto_path).write_bytes(proto)
    out.put({"seconds": seconds, "cpu_seconds": time.process_time() - c0, "peak_mb": _peak_mb()})


def _round_phase(text_path: str, proto_path: str, out: Queue) -> None:
    from madapt.tokenizers.evidence import prune_by_evidence
    from madapt.tokenizers.scoring import adat_score
    from madapt.tokenizers.unigram import UnigramModel, word_counts
    from madapt.tokenizers.unigram_round import reestimate_scores, round_stats
    from madapt.tokenizers.units import sp_normalizer, unit_mode

    proto = Path(proto_path).read_bytes()
    model = UnigramModel.from_sentencepiece(proto)
    times = {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    words = word_counts(iter_lines(text_path), sp_normalizer(proto), unit_mode(model.pieces))
    times["word_count_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = round_stats(model, words)
    times["counts_and_removal_loss_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = np.random.default_rng(0).gamma(2.0, 50.0, size=len(model.pieces))  # stand-in for the LM loss sum
    evidenced = np.random.default_rng(1).random(len(b)) < 0.9
    score = adat_score(stats.loss, b, "ratio")
    required = model.required_mask()
    keep = prune_by_evidence(
        model.pieces, score, stats.loss, int((~required).sum()) // 5, required, evidenced
    )
    times["score_and_prune_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reestimate_scores(model.subset(keep), words, 2)
    times["em_2_iterations_s"] = time.perf_counter() - t0
    finite = np.isfinite(stats.loss)
    out.put(
        {
            **times,
            "seconds": sum(times.values()),
            "cpu_seconds": time.process_time() - c0,
            "peak_mb": _peak_mb(),
            "unique_words": len(words.words),
            "unique_word_chars": sum(len(w) for w in words.words),
            "vocab": len(model.pieces),
            "pruned": int((~keep).sum()),
            "loss_negative_fraction": round(float((stats.loss[finite] < 0).mean()), 5),
            "loss_inf_count": int((~finite).sum()),
        }
    )


def iter_lines(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def _in_child(target, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(*args, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 MB of text, 20k pieces")
    parser.add_argument("--mbytes", type=float, default=None, help="text size in MB")
    parser.add_argument("--vocab", type=int, default=None, help="requested initial vocabulary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-lm", action="store_true", help="only the sampler and LM-scoring figures")
    parser.add_argument("--skip-lm", action="store_true", help="skip the sampler and LM-scoring figures")
    args = parser.parse_args()
    if args.only_lm:
        print(json.dumps(micro_figures(args.quick), indent=1))
        return
    mbytes = args.mbytes or (1.0 if args.quick else 10.0)
    vocab = args.vocab or (20_000 if args.quick else 150_000)
    t0 = time.perf_counter()
    lines = make_text(int(mbytes * 1e6), n_pseudo=int(150_000 * mbytes), seed=0)
    t_text = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="adat-bench-") as tmp:
        text_path, proto_path = str(Path(tmp) / "text.txt"), str(Path(tmp) / "initial.model")
        Path(text_path).write_text("\n".join(lines) + "\n", encoding="utf-8")
        baseline = _in_child(_sentencepiece_phase, text_path, vocab, args.threads, proto_path)
        ours = _in_child(_round_phase, text_path, proto_path)
    extra = {} if args.skip_lm else micro_figures(args.quick)
    print(
        json.dumps(
            {
                "text_mbytes": round(sum(len(x.encode()) + 1 for x in lines) / 1e6, 2),
                "vocab_requested": vocab,
                "threads": args.threads,
                "cpu_count": os.cpu_count(),
                "text_generation_s": round(t_text, 2),
                "sentencepiece_train": {k: round(v, 2) for k, v in baseline.items()},
                "round": {k: round(v, 3) if isinstance(v, float) else v for k, v in ours.items()},
                "round_over_sentencepiece_time": round(ours["seconds"] / baseline["seconds"], 3),
                "round_over_sentencepiece_cpu_time": round(ours["cpu_seconds"] / baseline["cpu_seconds"], 3),
                "round_over_sentencepiece_peak_memory": round(ours["peak_mb"] / baseline["peak_mb"], 3),
                "targets": {"seconds": 60.0, "peak_mb": 2048.0},
                "targets_met": bool(ours["seconds"] <= 60.0 and ours["peak_mb"] <= 2048.0),
                **extra,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
