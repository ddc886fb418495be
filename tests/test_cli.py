"""The `madapt` command through a real subprocess: exit codes, one-line errors, untouched folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

TINY = """\
kind: continual
seed: 0
backbone: madapt-tiny-ViT-B-16
pretrained: random
data: {collection: micro, order: [colour, count], train_size: 16, test_size: 20, reference_size: 8}
train: {iterations: 2, batch_size: 4, warmup_steps: 1, checkpoint_every: 1}
eval: {batch_size: 20}
methods: [zeroshot]
"""


def madapt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "madapt.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.yaml").write_text(TINY)
    result = madapt("run", "tiny.yaml", "--out", "out", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "out"


def test_run_writes_a_complete_run_folder(finished_run: Path):
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.yaml", "results.json", "log.txt", "report.md", "heatmap_zeroshot.png"} <= names
    assert "train:" in (finished_run / "config.yaml").read_text()  # fully resolved, defaults included


BAD_CASES = {
    "missing_file": (["run", "nope.yaml"], ["nope.yaml", "no such config file"]),
    "unknown_preset": (["run", "mtil/zscl_ordr1"], ["preset", "did you mean"]),
    "unknown_key": (
        ["run", "tiny.yaml", "train.iteratons=3"],
        ["train.iteratons", "did you mean 'iterations'"],
    ),
    "wrong_type": (["run", "tiny.yaml", "train.batch_size=many"], ["train.batch_size", "many"]),
    "out_of_range": (["run", "tiny.yaml", "train.iterations=0"], ["train.iterations", "greater than 0"]),
    "unknown_method": (["run", "tiny.yaml", "methods=[zcsl]"], ["method 'zcsl'", "did you mean 'zscl'"]),
    "unknown_dataset": (["run", "tiny.yaml", "data.order=[colour,colours]"], ["data.order.1", "colours"]),
    "unknown_backbone": (["run", "tiny.yaml", "backbone=ViT-B-61"], ["backbone: 'ViT-B-61'", "did you mean"]),
    "classifier_as_clip": (["run", "tiny.yaml", "backbone=resnet50"], ["backbone: 'resnet50'", "not CLIP"]),
    "missing_pretrained": (
        ["run", "tiny.yaml", "backbone=ViT-B-16", "pretrained=null"],
        ["pretrained", "random"],
    ),
    "missing_data_root": (
        ["run", "tiny.yaml", "data.collection=mtil", "data.order=[dtd]"],
        ["data_root", "missing"],
    ),
    "absent_data_root": (
        ["run", "tiny.yaml", "data.collection=mtil", "data.order=[dtd]", "data_root=nowhere"],
        ["nowhere"],
    ),
    "missing_weights": (["run", "tiny.yaml", "pretrained=absent.safetensors"], ["absent.safetensors"]),
    "not_weights": (["run", "tiny.yaml", "pretrained=tiny.yaml"], ["tiny.yaml"]),
    "corrupt_weights": (["run", "tiny.yaml", "pretrained=corrupt.safetensors"], ["corrupt.safetensors"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: str, tiny_config: Path):
    root = tiny_config.parent
    out = root / "out"
    args, needles = BAD_CASES[case]
    if case == "corrupt_weights":
        save_file({"w": torch.zeros(4)}, str(root / "corrupt.safetensors"))
        data = (root / "corrupt.safetensors").read_bytes()
        (root / "corrupt.safetensors").write_bytes(data[: len(data) // 2])
    result = madapt(*args, "--out", str(out), cwd=root)
    assert_user_error(result, *needles)
    assert not out.exists()


def test_malformed_yaml_names_the_line(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text("kind: continual\nseed: 0\ndata: {order: [a, b\ntrain: 3\n")
    assert_user_error(madapt("run", "bad.yaml", cwd=tmp_path), "bad.yaml", "line")


def test_occupied_folder_is_never_overwritten(finished_run: Path, tmp_path: Path):
    before = snapshot(finished_run)
    (tmp_path / "other.yaml").write_text(TINY.replace("seed: 0", "seed: 1"))
    result = madapt("run", "other.yaml", "--out", str(finished_run), cwd=tmp_path)
    assert_user_error(result, "finished run", "--resume")
    resumed_changed = madapt("run", "other.yaml", "--out", str(finished_run), "--resume", cwd=tmp_path)
    assert_user_error(resumed_changed, "seed", "differs")
    assert snapshot(finished_run) == before


def test_list_shows_registered_names(tmp_path: Path):
    result = madapt("list", "methods", cwd=tmp_path)
    assert result.returncode == 0
    assert {"zeroshot", "finetune", "lwf", "lwf_vr", "icarl", "wise_ft", "zscl", "individual"} <= set(
        result.stdout.split()
    )
    presets = madapt("list", "presets", cwd=tmp_path).stdout.split()
    assert "demo/default" in presets
    assert_user_error(madapt("list", "method", cwd=tmp_path), "did you mean 'methods'")


def test_redirected_output_gets_wide_tables_unless_columns_is_set(monkeypatch) -> None:
    from madapt.cli import _console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert _console().width == 160  # pytest captures stdout: not a terminal
    monkeypatch.setenv("COLUMNS", "100")
    assert _console().width == 100
