"""The thesis' tables and figures from one run (seed 000 Tables 6.9–6.11, Figures 6.2–6.5)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from rich.console import Console

from madapt import catalog
from madapt.backbones.classifier import load_classifier
from madapt.prompting import visual_figures, visual_report
from madapt.recipes import run_experiment
from madapt.runs import save_tensors

catalog.load_all()


def test_one_run_holds_tables_6_9_6_10_and_figures_6_2_6_3(tmp_path: Path) -> None:
    torch.manual_seed(0)
    other = tmp_path / "tiny.safetensors"
    save_tensors(other, load_classifier("madapt-tiny-resnet50").model.state_dict())
    variants = (
        "[hardcoded, flm, otlm, {name: otlm, label: greedy_freq, options: {solver: greedy, cost: frequency}},"
        " {name: hardcoded, label: vp_half, shots_fraction: 0.5}, {name: otlm, label: otlm_half,"
        " shots_fraction: 0.5}, {name: hardcoded, label: vp_tiny, source: tiny},"
        " {name: otlm, label: otlm_tiny, source: tiny}]"
    )
    args = [
        "data.name=digits",
        "data.train_per_class=4",
        "data.val_per_class=1",
        "data.test_per_class=2",
        "train.epochs=1",
        "train.batch_size=16",
        f"sources={{tiny: {{backbone: madapt-tiny-resnet50, weights: {other}}}}}",
        f"variants={variants}",
    ]
    results = run_experiment("vp/micro_otlm", args, tmp_path / "run", False, Console(file=io.StringIO()))
    v = results["variants"]
    assert v["otlm_tiny"]["backbone"] == "madapt-tiny-resnet50" and max(v["otlm_tiny"]["mapping"]) < 1000
    assert v["otlm_half"]["train_images"] == 20 and v["otlm"]["train_images"] == 40
    assert set(results["figures"]) == {"figure_6_2", "figure_6_3", "figure_6_4", "figure_6_5"}
    for name in results["figures"].values():
        assert (tmp_path / "run" / name).is_file()
    report = (tmp_path / "run" / "report.md").read_text()
    for heading in ("Table 6.9", "Table 6.10", "Figure 6.2", "Figure 6.3", "Figure 6.4"):
        assert heading in report, heading
    table_6_9 = visual_report.ablation_rows(results)
    assert {(r["algorithm"], r["cost matrix"]) for r in table_6_9} == {
        ("Linear programming (lsa)", "OT"),
        ("Greedy", "Frequency"),
    }
    table_6_10 = visual_report.share_rows(results)
    assert [r["method"] for r in table_6_10] == ["FLM", "OTLM", "VP (hard-coded)"]
    assert (
        list(table_6_10[0])[1:] == ["100% (4.0/class)", "50% (2.0/class)"]
        and table_6_10[0]["50% (2.0/class)"] == "-"
    )
    assert table_6_10[1]["50% (2.0/class)"].startswith(f"{v['otlm_half']['accuracy']:.1f} (")
    # the x-encoder column of Table 6.11: the prompt's share of the encoder's parameters
    rows = {r["variant"]: r for r in visual_report.summary_rows(results)}
    assert float(rows["otlm"]["x encoder"]) == round(
        v["otlm"]["trainable_params"] / v["otlm"]["encoder_params"], 4
    )


def _results(flm: list[int], otlm: list[int]) -> dict:
    return {
        "dataset": "toy",
        "classnames": ["gray jay", "gray catbird", "loon"],
        "variants": {
            "flm": {"name": "flm", "initial_mapping": flm},
            "otlm": {"name": "otlm", "initial_mapping": otlm},
        },
    }


def test_figure_6_5_shows_the_class_where_the_mappings_differ(tmp_path: Path) -> None:
    logits = torch.zeros(3, 6)
    logits[0, 2], logits[1, 2], logits[0, 4] = 5.0, 4.5, 3.0  # source 2: high for jay and catbird alike
    path = visual_figures.logits_explained(_results([2, 1, 0], [4, 2, 0]), logits, tmp_path / "f.png")
    assert path is not None and path.is_file()
    assert visual_figures.logits_explained(_results([2, 1, 0], [2, 1, 0]), logits, tmp_path / "g.png") is None
    assert not (tmp_path / "g.png").exists()


def test_table_6_11_counts_what_each_method_trains(tmp_path: Path) -> None:
    args = ["backbone=madapt-tiny-vit-in21k", "prompt.pad=4", "datasets={a: 3, b: 5}"]
    results = run_experiment(
        "vp/table_6_11_vitb22k", args, tmp_path / "run", False, Console(file=io.StringIO())
    )
    vit = load_classifier("madapt-tiny-vit-in21k").model
    encoder = sum(p.numel() for n, p in vit.named_parameters() if not n.startswith("head"))
    d = vit.embed_dim
    pads = 3 * (32 * 32 - 24 * 24)
    assert results["encoder_params"] == encoder
    assert results["totals"] == {
        "FF": 2 * encoder + (d * 3 + 3) + (d * 5 + 5),
        "LP": (d * 3 + 3) + (d * 5 + 5),
        "VP": 2 * pads,
        "FLM": 2 * pads,
        "ILM": 2 * pads,
        "OTLM": 2 * pads,
    }
    assert results["times_encoder"]["VP"] == 2 * pads / encoder
    assert "Table 6.11" in (tmp_path / "run" / "report.md").read_text()
