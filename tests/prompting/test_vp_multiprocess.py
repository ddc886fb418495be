"""Two processes under `accelerate launch` train one VP run: batch shares, averaged gradients,
summed mapping statistics and sharded evaluation follow the single-process run (issue 15, item 1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from madapt.runs import Checkpointer

SRC = Path(__file__).resolve().parents[2] / "src"
CONFIG = """\
base: vp/micro_otlm
data: {name: digits, train_per_class: 5, val_per_class: 2, test_per_class: 3}
train: {epochs: 2, batch_size: 16}
variants: [otlm, {name: ilm, mapping_source: train_pass}, linear_probe]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(processes: int, out: str) -> list[str]:
    run = ["-m", "madapt.cli", "run", "cfg.yaml", "--out", out]
    if processes == 1:
        return [sys.executable, *run]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *run,
    ]


@pytest.mark.slow
def test_two_processes_follow_the_single_process_run(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for n, out in ((1, "one"), (2, "two")):
        proc = subprocess.run(
            _command(n, out), cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=900
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one/results.json").read_text())["variants"]
    two = json.loads((tmp_path / "two/results.json").read_text())["variants"]
    assert "(2 processes)" in (tmp_path / "two/log.txt").read_text()
    for tag in ("otlm", "ilm", "linear_probe"):
        a, b = one[tag], two[tag]
        assert a.get("mapping") == b.get("mapping"), tag  # summed statistics: the same mapping
        for x, y in zip(a["history"], b["history"]):
            assert abs(x["loss"] - y["loss"]) < 1e-4 * max(1.0, abs(x["loss"])), tag
        # one test image is 100/30 points: summation order may flip at most a borderline image
        assert abs(a["final_accuracy"] - b["final_accuracy"]) <= 100 / 30 + 1e-9, tag
        w1 = Checkpointer(tmp_path / "one" / tag / "checkpoints").load().state["learner"]
        w2 = Checkpointer(tmp_path / "two" / tag / "checkpoints").load().state["learner"]
        for key in w1:
            torch.testing.assert_close(w1[key], w2[key], rtol=1e-3, atol=1e-4)
