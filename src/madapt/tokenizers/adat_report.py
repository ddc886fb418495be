"""The ADAT run's report: the comparison table (with ``seeds``: mean ± std over seeds and the
paired difference with Unigram, seed by seed), per-round tables and the scoring LM's curve."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console

from madapt.report import plots
from madapt.report.markdown import Section, write_report
from madapt.report.tables import print_table
from madapt.runs import RunFolder
from madapt.tokenizers.adat_config import BASELINES


def seed_summary(per_seed: dict[str, Any]) -> dict[str, Any]:
    """Mean and sample std over seeds of each tokenizer's metrics, and how ADAT's bits/byte
    compares with Unigram's seed by seed (the paired difference)."""
    keys = ("bits_per_byte", "bytes_per_token", "token_ppl", "train_steps")
    names = [n for n in next(iter(per_seed.values())).get("evaluation", {})]
    table: dict[str, Any] = {}
    for name in names:
        values = {k: np.array([r["evaluation"][name][k] for r in per_seed.values()], float) for k in keys}
        table[name] = {
            k: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
            for k, v in values.items()
        }
    paired = {}
    if "unigram" in names:
        for name in names:
            if name in BASELINES:
                continue
            diff = np.array(
                [
                    r["evaluation"][name]["bits_per_byte"] - r["evaluation"]["unigram"]["bits_per_byte"]
                    for r in per_seed.values()
                ]
            )
            paired[name] = {
                "mean": float(diff.mean()),
                "std": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
                "seeds_below_unigram": int((diff < 0).sum()),
                "seeds": len(diff),
            }
    return {"tokenizers": table, "bpb_minus_unigram": paired}


def report(results: dict[str, Any], folder: RunFolder, console: Console) -> None:
    """Comparison table (terminal + report.md; with ``seeds``, mean ± std over seeds first and the
    first seed's details after), per-round tables and a held-out LM loss plot."""
    sections = []
    if "seeds" in results:
        sections += _seed_sections(results, console)
        first = next(iter(results["seeds"]))
        results = results["seeds"][first]
        console = Console(quiet=True)
        sections.append(Section(f"Seed {first} in detail", text="The tables below are one seed's."))
    sections += _single_sections(results, folder, console)
    write_report(folder.path, "ADAT report", sections)


def _seed_sections(results: dict[str, Any], console: Console) -> list[Section]:
    summary = results["summary"]
    n = len(results["seeds"])
    rows = [
        {
            "tokenizer": name,
            **{
                label: f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}"
                for k, label in (("bits_per_byte", "bits/byte"), ("bytes_per_token", "bytes/token"))
            },
            "train steps": f"{m['train_steps']['mean']:.0f} ± {m['train_steps']['std']:.1f}",
        }
        for name, m in summary["tokenizers"].items()
    ]
    print_table(f"Mean ± std over {n} seeds (same LM, same text, equal steps)", rows, console=console)
    paired = [
        {
            "tokenizer": name,
            "bits/byte − Unigram's": f"{d['mean']:+.4f} ± {d['std']:.4f}",
            "seeds below Unigram": f"{d['seeds_below_unigram']} of {d['seeds']}",
        }
        for name, d in summary["bpb_minus_unigram"].items()
    ]
    if paired:
        print_table("Paired difference with Unigram, seed by seed", paired, console=console)
    return [
        Section(f"Comparison over {n} seeds (mean ± sample std)", rows=rows),
        *([Section("Paired difference with Unigram", rows=paired)] if paired else []),
    ]


def _single_sections(results: dict[str, Any], folder: RunFolder, console: Console) -> list[Section]:
    sections = []
    evaluation = results.get("evaluation", {})
    rows = [
        {
            "tokenizer": name,
            "vocab": m["vocab_size"],
            "bits/byte": m["bits_per_byte"],
            "token PPL (not comparable)": m["token_ppl"],
            "bytes/token": m["bytes_per_token"],
            "train steps": m["train_steps"],
            "overlap w/ unigram": m.get("overlap_with_unigram"),
        }
        for name, m in evaluation.items()
    ]
    if rows:
        print_table(
            "ADAT vs baselines at equal vocabulary size (same LM, same training text)",
            rows,
            digits=3,
            console=console,
        )
        beats = results.get("beats_unigram_bpb", {})
        verdicts = ", ".join(f"{n}: {'yes' if v else 'no'}" for n, v in beats.items())
        sections.append(
            Section(
                "Comparison",
                rows=rows,
                digits=3,
                text=(
                    "Bits per byte is the fair metric across vocabularies; token perplexity divides the "
                    "same NLL by a tokenizer-dependent token count and is shown only for comparison with "
                    "the paper. "
                    f"Lower bits per byte than Unigram: {verdicts or 'n/a'}."
                ),
            )
        )
    images = []
    series = {}
    for name, v in results["variants"].items():
        round_rows = [
            {
                k: e[k]
                for k in (
                    "round",
                    "size_before",
                    "size_after",
                    "unseen_in_scoring",
                    "scored_from_evidence",
                    "without_evidence",
                    "sampling_alpha",
                    "length_ratio",
                    "lm_heldout_loss",
                    "seconds",
                )
            }
            | {"lowest pruned": " ".join(e["lowest_pruned"][:6])}
            for e in v["rounds"]
        ]
        heading = f"Rounds: {name} (balance {v['balance']}, β {v['beta']} on {v['momentum_on']})"
        sections.append(
            Section(
                heading,
                rows=round_rows,
                digits=3,
                text=f"Final size {v['final_size']}, round trip "
                f"lossless: {v['roundtrip_lossless']}. Pieces absent from the scoring slice are "
                "scored on unseen training text (scored_from_evidence) or, with no evidence, "
                "pruned at the round's rate by the Unigram loss alone (without_evidence); "
                "length_ratio = sampled / Viterbi tokens of the LM's training text.",
            )
        )
        series[name] = [e["lm_heldout_loss"] for e in v["rounds"]]
    if series:
        xs = list(range(1, len(next(iter(series.values()))) + 1))
        images.append(
            plots.curves(
                xs,
                series,
                folder.path / "heldout_loss.png",
                "round",
                "held-out LM loss per token (nats)",
                "Scoring LM per round",
            )
        )
        sections.append(Section("Scoring LM", images=images))
    return sections
