"""Several processes train one continual run (`accelerate launch`): batches and evaluation sets are
sharded, gradients averaged, and the run follows the single-process trajectory (issue 3, engine:
"accelerate for several processes")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_kill_resume import CONFIG  # the tiny MTIL-micro run the single-process kill test uses

from launch_helpers import madapt_run
from madapt.backbones.clip import load_clip
from madapt.continual.context import TrainSettings
from madapt.continual.stream import eval_batches, train_batches
from madapt.continual.tasks import ArrayDataset
from madapt.runs import Checkpointer, seed_everything
from madapt.training import Processes

SRC = Path(__file__).resolve().parents[2] / "src"


def _dataset(n: int = 20) -> ArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(n, 8, 8, 3)).astype(np.uint8)
    return ArrayDataset(images, np.arange(n) % 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_tile_the_range(world: int) -> None:
    for n in (0, 1, 7, 12, 13):
        shards = [list(Processes(r, world).shard(n)) for r in range(world)]
        assert sum(shards, []) == list(range(n))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_train_shards_reassemble_the_single_process_batch(num_workers: int) -> None:
    data = _dataset()
    settings = TrainSettings(iterations=[5] * 4, batch_size=6, lrs=[1e-3], num_workers=num_workers, seed=4)
    if num_workers:  # the DataLoader path: items drawn one by one with their own augmentation seed
        data = torch.utils.data.TensorDataset(torch.arange(20).float(), torch.arange(20) % 3)
    whole = list(train_batches(data, settings, task=1, start=2))
    parts = [
        list(train_batches(data, settings, task=1, start=2, processes=Processes(r, 2))) for r in range(2)
    ]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for full, a, b in zip(whole, *parts):
        assert len(a[0]) == len(b[0]) == 3
        torch.testing.assert_close(torch.cat([a[0], b[0]]), full[0], rtol=0, atol=0)
        assert torch.equal(torch.cat([a[1], b[1]]), full[1])


def test_eval_shards_cover_the_test_set_once() -> None:
    data = _dataset(23)
    whole = torch.cat([x for x, _ in eval_batches(data, 5, 0)])
    parts = [torch.cat([x for x, _ in eval_batches(data, 5, 0, Processes(r, 3))]) for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)
    assert len(whole) == 23


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run_processes(cwd: Path, out: str) -> list[int]:
    """Pids of the `madapt run --out OUT` processes started in ``cwd`` (launcher children included)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            here = Path(os.readlink(entry / "cwd")) == cwd
        except OSError:
            continue
        if (
            here
            and b"madapt.cli" in argv
            and out.encode() in argv
            and b"accelerate.commands.launch" not in argv
        ):
            pids.append(int(entry.name))
    return pids


def _final_weights(run: Path, method: str) -> dict[str, torch.Tensor]:
    return Checkpointer(run / method / "checkpoints").load().state["model"]


@pytest.mark.slow
def test_two_processes_follow_the_single_process_run(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    for n, out in ((1, "one"), (2, "two")):
        proc = subprocess.run(
            madapt_run(n, out), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one/results.json").read_text())["methods"]
    two = json.loads((tmp_path / "two/results.json").read_text())["methods"]
    assert "(2 processes)" in (tmp_path / "two/log.txt").read_text()
    seed_everything(0)  # the run's own initialisation of the random tiny CLIP (config seed 0)
    theta0 = load_clip("madapt-tiny-ViT-B-16").model.state_dict()
    for method in ("finetune", "zscl"):
        # one test image is 100/24 points: summation order may flip at most a borderline image
        diff = np.abs(np.array(one[method]["accuracy"]) - np.array(two[method]["accuracy"]))
        assert diff.max() <= 100 / 24 + 1e-9, (method, one[method]["accuracy"], two[method]["accuracy"])
        w1, w2 = _final_weights(tmp_path / "one", method), _final_weights(tmp_path / "two", method)
        assert w1.keys() == w2.keys() and len(w1) > 10
        # Attention key biases get a gradient that is zero up to rounding (softmax ignores a shift),
        # which Adam rescales into full-size random steps: only they may differ beyond rounding.
        keys = [k for k in w1 if "in_proj_bias" not in k]
        moved = torch.cat([(w1[k] - theta0[k]).flatten() for k in keys])
        apart = torch.cat([(w2[k] - w1[k]).flatten() for k in keys])
        assert moved.norm() > 0.1
        assert apart.norm() / moved.norm() < 1e-2, (method, float(apart.norm() / moved.norm()))


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match_an_uninterrupted_run(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    whole = subprocess.run(
        madapt_run(2, "whole"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    # kill the whole process group once the second checkpoint of the first method exists
    proc = subprocess.Popen(
        madapt_run(2, "killed"),
        cwd=tmp_path,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pointer = tmp_path / "killed/finetune/checkpoints/latest.json"
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(pointer.read_text())["seq"] >= 1:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    workers = _run_processes(tmp_path, "killed")
    assert len(workers) >= 2, workers  # both ranks are alive: the kill lands mid-run
    for pid in (proc.pid, *workers):  # torchrun starts each rank in its own session
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    time.sleep(0.5)
    assert not _run_processes(tmp_path, "killed")
    assert not (tmp_path / "killed/results.json").exists()
    resumed = subprocess.run(
        madapt_run(2, "killed", resume=True),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "whole/results.json").read_text())["methods"]
    b = json.loads((tmp_path / "killed/results.json").read_text())["methods"]
    for method in ("finetune", "zscl"):
        assert a[method]["accuracy"] == b[method]["accuracy"]
        w1, w2 = _final_weights(tmp_path / "whole", method), _final_weights(tmp_path / "killed", method)
        for key in w1:
            assert torch.equal(w1[key], w2[key]), f"{method} {key}"
