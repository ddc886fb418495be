"""Gradients are synchronised across two CPU processes (gloo) under `accelerate launch`.

Issue 2 item 9: two processes on different data shards end one step with identical weights, which
moved away from the initial ones and equal a single-process step on the whole batch.

The launch uses `--multi_gpu --num_processes 2` (accelerate's torchrun path) while the worker builds
its Accelerator with ``cpu=True``, which makes accelerate pick MULTI_CPU with gloo. With accelerate
1.15, `--cpu --num_processes 2` only spawns several processes through `mpirun` with a hostfile;
without one it silently starts a single process.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import madapt
from launch_helpers import launch

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.mark.slow
def test_two_cpu_processes_average_gradients(tmp_path: Path) -> None:
    src = str(Path(madapt.__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    cmd = launch(2, str(WORKER), str(tmp_path))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta == {"distributed_type": "MULTI_CPU", "backend": "gloo", "world": 2}
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    initial = load_file(str(tmp_path / "initial.safetensors"))
    single = load_file(str(tmp_path / "single_process.safetensors"))
    assert rank0.keys() == rank1.keys() == initial.keys() == single.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
        assert not torch.allclose(rank0[name], initial[name]), f"{name} did not move"
        torch.testing.assert_close(rank0[name], single[name], rtol=0, atol=1e-6)
