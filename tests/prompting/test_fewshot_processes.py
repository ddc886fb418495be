"""Real ``madapt run`` processes of ``kind: fewshot``: SIGKILLed at random moments and resumed, and two
processes under ``accelerate launch`` (slow); plus the batch sharding they rely on (fast)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from launch_helpers import madapt_run
from madapt.continual.tasks import ArrayDataset
from madapt.prompting.fewshot import Settings, _batches, _Progress
from madapt.runs import Checkpointer
from madapt.training import Processes

SRC = Path(__file__).resolve().parents[2] / "src"
CONFIG = """\
kind: fewshot
seed: [1]
data: {datasets: [colour], shots: 2, train_per_class: 4, val_per_class: 4, test_size: 40}
train: {epochs: 5, checkpoint_every: 2}
threads: 1
methods: [{name: adapt, tokens: 4, t_target: 10, n_k: 2, r_p: 3, lr: 0.01}]
"""
SUB = Path("colour/adapt/seed1")


@pytest.mark.parametrize("workers", [0, 1])
def test_process_slices_reassemble_the_single_process_batches(workers):
    rng = np.random.default_rng(0)
    data = ArrayDataset(
        rng.integers(0, 255, (22, 4, 4, 3)).astype(np.uint8), np.arange(22) % 5, (0.5,) * 3, (0.5,) * 3
    )
    if workers:  # the DataLoader path, items one by one
        data = torch.utils.data.TensorDataset(torch.arange(22).float(), torch.arange(22) % 5)
    settings = Settings(epochs=2, batch_size=6, seed=3, num_workers=workers)
    whole = list(_batches(data, settings, Processes(), _Progress(epoch=1, batch=1)))
    parts = [list(_batches(data, settings, Processes(r, 2), _Progress(epoch=1, batch=1))) for r in range(2)]
    assert [b for b, _ in whole] == [1, 2]  # 22 // 6 = 3 batches (drop_last), resumed at batch 1
    for (_, (x, y)), (_, (xa, ya)), (_, (xb, yb)) in zip(whole, *parts):
        assert len(xa) == len(xb) == 3
        assert torch.equal(torch.cat([xa, xb]), x) and torch.equal(torch.cat([ya, yb]), y)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _final(run: Path) -> dict[str, torch.Tensor]:
    """Prompts and masks of the last checkpoint (written after the final epoch)."""
    state = Checkpointer(run / SUB / "checkpoints").load().state["method"]
    return {
        f"{kind}.{tower}.{i}": t
        for kind in ("prompts", "masks")
        for tower, ts in state[kind].items()
        for i, t in enumerate(ts)
    }


def _pointer(run: Path) -> tuple[int | None, bool]:
    folder = run / SUB / "checkpoints"
    try:
        seq = json.loads((folder / "latest.json").read_text())["seq"]
    except (FileNotFoundError, json.JSONDecodeError):
        seq = None
    writing = folder.is_dir() and any(p.name.startswith(".ckpt-") for p in folder.iterdir())
    return seq, writing


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_identical_prompts_and_masks(tmp_path):
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    began = time.monotonic()
    done = subprocess.run(
        madapt_run(1, "A"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900
    )
    span = time.monotonic() - began
    assert done.returncode == 0, done.stderr[-3000:]
    rng, kills = random.Random(14), []
    for attempt in range(8):
        resume = (tmp_path / "B" / "config.yaml").is_file()
        proc = subprocess.Popen(
            madapt_run(1, "B", resume=resume),
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        mode = ("new_checkpoint", "while_writing", "delay")[attempt % 3]
        start, (seen, _) = time.monotonic(), _pointer(tmp_path / "B")
        delay = rng.uniform(0.1, 0.9) * span
        while proc.poll() is None:
            seq, writing = _pointer(tmp_path / "B")
            if {
                "new_checkpoint": seq != seen,
                "while_writing": writing,
                "delay": time.monotonic() - start > delay,
            }[mode]:
                proc.kill()  # SIGKILL
                kills.append(mode)
                break
            time.sleep(0.002)
        proc.wait()
    final = subprocess.run(
        madapt_run(1, "B", resume=True), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert len(kills) >= 3, kills
    a, b = _final(tmp_path / "A"), _final(tmp_path / "B")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kills
    ra, rb = (json.loads((tmp_path / r / SUB / "results.json").read_text()) for r in ("A", "B"))
    assert ra["test"] == rb["test"] and ra["summary"]["masks"] == rb["summary"]["masks"]
    assert ra["summary"]["live_tokens"] == 10


@pytest.mark.slow
def test_two_processes_follow_the_single_process_run(tmp_path):
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    for n, out in ((1, "one"), (2, "two")):
        proc = subprocess.run(
            madapt_run(n, out), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 processes)" in (tmp_path / "two" / "log.txt").read_text()
    one, two = _final(tmp_path / "one"), _final(tmp_path / "two")
    for key in one:
        if key.startswith("masks"):  # same scores up to summation order: the same tokens are pruned
            assert torch.equal(one[key], two[key]), key
    moved = torch.cat([one[k].flatten() for k in one if k.startswith("prompts")])
    apart = torch.cat([(two[k] - one[k]).flatten() for k in one if k.startswith("prompts")])
    assert apart.norm() / moved.norm() < 1e-4
