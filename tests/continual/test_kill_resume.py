"""A real `madapt run`, SIGKILLed at random moments and resumed, ends with the same accuracy matrices,
the same final weights and the same method state, bit for bit, as an uninterrupted run (CPU).

Kills are aimed at four kinds of moment, chosen by a seeded RNG: a random delay (start-up, data
generation, training), just after a checkpoint appears (training of the next steps), as soon as a
temporary checkpoint folder exists (while a checkpoint is being written), and right after a
task's "trained" checkpoint (evaluation).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from madapt.runs import Checkpointer

pytestmark = pytest.mark.slow

CONFIG = """\
kind: continual
seed: 0
backbone: madapt-tiny-ViT-B-16
pretrained: random
data: {collection: micro, order: [colour, count, shape], train_size: 24, test_size: 24, reference_size: 16}
train: {iterations: 6, batch_size: 4, warmup_steps: 1, checkpoint_every: 2, lr: 0.001}
eval: {batch_size: 12}
methods: [finetune, {name: zscl, average_every: 2, reference_batch_size: 4},
          {name: icarl, memory_size: 10, replay_batch_size: 4}]
"""
METHODS = ("finetune", "zscl", "icarl")
MODES = ("after_checkpoint", "while_writing", "in_evaluation", "delay")
MAX_KILLS = 10
SRC = Path(__file__).resolve().parents[2] / "src"


def start(cwd: Path, out: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    resume = ["--resume"] if (cwd / out / "config.yaml").is_file() else []
    return subprocess.Popen(
        [sys.executable, "-m", "madapt.cli", "run", "cfg.yaml", "--out", out, *resume],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint_view(run: Path) -> tuple[tuple, bool]:
    """(the latest checkpoint of every method, whether a checkpoint is being written right now)."""
    latest, writing = [], False
    for method in METHODS:
        folder = run / method / "checkpoints"
        try:
            pointer = json.loads((folder / "latest.json").read_text())
            latest.append((method, pointer["seq"], pointer["unit"]["phase"]))
        except (FileNotFoundError, json.JSONDecodeError):
            latest.append((method, None, None))
        try:
            writing = writing or any(p.name.startswith(".ckpt-") for p in folder.iterdir())
        except FileNotFoundError:
            pass
    return tuple(latest), writing


def run_until_killed(proc: subprocess.Popen, run: Path, mode: str, rng: random.Random, span: float) -> bool:
    """Wait for ``mode``'s moment and SIGKILL; False if the process finished first.

    ``span`` is how long the uninterrupted run took: "delay" kills land anywhere inside it.
    """
    began = time.monotonic()
    delay = rng.uniform(0.05, 0.95) * span
    seen, _ = checkpoint_view(run)
    while proc.poll() is None:
        latest, writing = checkpoint_view(run)
        fresh = latest != seen
        hit = {
            "delay": time.monotonic() - began >= delay,
            "after_checkpoint": fresh,
            "while_writing": writing,
            "in_evaluation": fresh and any(phase == "trained" for _, _, phase in latest),
        }[mode]
        seen = latest
        if hit:
            if mode == "after_checkpoint":
                time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()  # SIGKILL
            proc.wait()
            return True
        time.sleep(0.003)
    return False


def matrices(run: Path) -> dict[str, list[list[float]]]:
    results = json.loads((run / "results.json").read_text())
    return {name: entry["accuracy"] for name, entry in results["methods"].items()}


def final_states(run: Path) -> dict[str, object]:
    """Each method's last checkpoint: model delta from theta_0 and method state."""
    return {m: Checkpointer(run / m / "checkpoints").load().state for m in METHODS}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_matrices(tmp_path):
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    began = time.monotonic()
    proc = start(tmp_path, "A")
    _, err = proc.communicate(timeout=900)
    span = time.monotonic() - began
    assert proc.returncode == 0, err
    expected = matrices(tmp_path / "A")
    assert set(expected) == set(METHODS)

    rng = random.Random(20261122)
    killed: list[str] = []
    run = tmp_path / "B"
    for attempt in range(MAX_KILLS + 1):
        proc = start(tmp_path, "B")
        if attempt < MAX_KILLS:
            mode = MODES[attempt % len(MODES)] if attempt < len(MODES) else rng.choice(MODES)
            if run_until_killed(proc, run, mode, rng, span):
                killed.append(mode)
                continue
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        break
    assert (run / "results.json").is_file()
    assert {"after_checkpoint", "while_writing", "in_evaluation"} <= set(killed), killed
    print("kills:", killed)  # shown with -s: which moments were hit
    assert matrices(run) == expected, killed
    want, got = final_states(tmp_path / "A"), final_states(run)
    for m in METHODS:
        assert same(got[m]["model"], want[m]["model"]), m
        assert same(got[m]["method"], want[m]["method"]), m
