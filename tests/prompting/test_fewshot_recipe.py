"""Recipe ``kind: fewshot`` end to end with zero-shot CLIP on micro tasks; config errors; aggregation."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from madapt import catalog
from madapt.config import load_config
from madapt.errors import ConfigError, UnknownNameError
from madapt.prompting.fewshot_report import aggregate
from madapt.recipes import run_experiment

catalog.load_all()

CONFIG = """\
kind: fewshot
seed: [1, 2]
data: {datasets: [colour, shape], shots: 4, train_per_class: 6, val_per_class: 4, test_size: 40}
methods: [zeroshot, {name: zeroshot, label: zs_ensemble, ensemble: true}]
select: [{label: best_zs, among: [zeroshot, zs_ensemble]}]
"""


def quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


def test_zero_shot_runs_every_dataset_and_seed_into_one_report(tmp_path):
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    results = run_experiment(str(tmp_path / "cfg.yaml"), [], tmp_path / "run", False, quiet())
    run = tmp_path / "run"
    assert set(results["runs"]) == {"colour", "shape"}
    for dataset in ("colour", "shape"):
        for label in ("zeroshot", "zs_ensemble"):
            seeds = results["runs"][dataset][label]
            assert set(seeds) == {"1", "2"}
            assert seeds["1"]["test"] == seeds["2"]["test"]  # nothing trains: the seed only moves the shots
            assert (run / dataset / label / "seed1" / "results.json").is_file()
        shots = json.loads((run / dataset / "shots_seed1.json").read_text())
        assert len(shots["train"]) == 4 * (10 if dataset == "colour" else 8)
        assert len(shots["val"]) == 4 * (10 if dataset == "colour" else 8)
        assert shots != json.loads((run / dataset / "shots_seed2.json").read_text())
    rows = {r["label"]: r for r in results["table"]["rows"]}
    assert rows["zeroshot"]["per_dataset"]["colour"]["std"] == 0.0
    assert rows["zeroshot"]["trainable_params"] == 0 and rows["zeroshot"]["gflops"] > 0
    assert rows["best_zs"]["selected"]
    report = (run / "report.md").read_text()
    assert "best_zs" in report and "± 0.00" in report
    again = run_experiment(str(tmp_path / "cfg.yaml"), [], run, True, quiet())  # finished: just re-read
    assert again["table"] == results["table"]


def test_selection_takes_the_best_validation_entry_per_dataset():
    def entry(test: float, val: float) -> dict:
        return {"test": test, "val": val, "summary": {"trainable_params": 10}, "gflops": {"per_image": 1.0}}

    results = {
        "datasets": ["a", "b"],
        "labels": ["t16", "t32"],
        "seeds": [1, 2],
        "select": [{"label": "auto", "among": ["t16", "t32"]}],
        "runs": {
            "a": {
                "t16": {"1": entry(50, 60), "2": entry(52, 62)},
                "t32": {"1": entry(70, 40), "2": entry(72, 40)},
            },
            "b": {
                "t16": {"1": entry(30, 10), "2": entry(34, 10)},
                "t32": {"1": entry(20, 90), "2": entry(22, 90)},
            },
        },
    }
    auto = aggregate(results)["rows"][-1]
    assert auto["per_dataset"]["a"]["label"] == "t16" and auto["per_dataset"]["b"]["label"] == "t32"
    assert auto["per_dataset"]["a"]["mean"] == 51 and auto["per_dataset"]["b"]["mean"] == 21
    assert auto["average"]["mean"] == pytest.approx(36)  # per seed: (50+20)/2 = 35, (52+22)/2 = 37
    assert auto["average"]["std"] == pytest.approx(2**0.5)


@pytest.mark.parametrize(
    "override, error, where",
    [
        (["methods=[zeroshot, zeroshot]"], ConfigError, "methods.1.label"),
        (["data.datasets=[colour, colours]"], ConfigError, "data.datasets.1"),
        (["methods=[{name: zeroshot, ensembl: true}]"], ConfigError, "ensembl"),
        (["methods=[zero_shot]"], UnknownNameError, "zero_shot"),
        (["select=[{label: s, among: [zeroshot, nope]}]"], ConfigError, "select.0.among"),
    ],
)
def test_config_mistakes_are_one_line_errors(tmp_path, override, error, where):
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    with pytest.raises(error) as info:
        load_config(str(tmp_path / "cfg.yaml"), override)
    assert where in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, where",
    [
        (["data.collection=coop", "data.datasets=[eurosat]"], "data_root"),
        (["backbone=ViT-B-16"], "pretrained"),
        # deeper prompts than the micro CLIP has blocks: caught before the zero-shot entry runs
        (["methods=[zeroshot, {name: vpt, depth_vision: 12}]", "select=[]"], "method.depth_vision"),
        (["methods=[zeroshot, {name: maple, prompt_depth: 9}]", "select=[]"], "method.prompt_depth"),
    ],
)
def test_missing_data_root_or_weights_fail_before_anything_is_written(tmp_path, override, where):
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    with pytest.raises(ConfigError) as info:
        run_experiment(str(tmp_path / "cfg.yaml"), override, tmp_path / "run", False, quiet())
    assert info.value.where.startswith(where)
    assert not (tmp_path / "run").exists()
