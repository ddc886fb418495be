"""Run folders, atomic checkpoints and exact state round trips (no pickle anywhere)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from madapt.errors import RunFolderError, WeightsError
from madapt.runs import (
    Checkpointer,
    join_state,
    load_tensors,
    open_run,
    rng_state,
    save_tensors,
    set_rng_state,
    split_state,
)


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    Checkpointer(tmp_path).save({"task": 1}, {"optim": opt.state_dict(), "note": "x", "ints": {3: [1, 2]}})
    loaded = Checkpointer(tmp_path).load()
    assert loaded.unit == {"task": 1}
    assert loaded.state["ints"] == {3: [1, 2]}
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.state["optim"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])
    files = {
        p.name for p in (tmp_path / json.loads((tmp_path / "latest.json").read_text())["name"]).iterdir()
    }
    assert files == {"state.safetensors", "state.json"}


def test_split_join_is_identity_on_nested_state():
    state = {"a": torch.arange(3), "b": [torch.ones(2), {"c": 1.5}], 7: "seven"}
    tensors, skeleton = split_state(state)
    json.dumps(skeleton)
    back = join_state(json.loads(json.dumps(skeleton)), tensors)
    assert torch.equal(back["a"], state["a"]) and back[7] == "seven" and back["b"][1] == {"c": 1.5}


def test_rng_state_round_trip_reproduces_draws():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    tensors, skeleton = split_state(state)
    set_rng_state(join_state(json.loads(json.dumps(skeleton)), tensors))
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save({"step": 1}, {"w": torch.ones(2)})
    # a kill during the next save leaves a temporary folder behind; the pointer still names step 1
    (tmp_path / ".ckpt-000001.tmpxyz").mkdir()
    (tmp_path / ".ckpt-000001.tmpxyz" / "state.safetensors").write_bytes(b"partial")
    assert ck.load().unit == {"step": 1}
    ck.save({"step": 2}, {"w": torch.zeros(2)})
    assert ck.load().unit == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001", "latest.json"]


def test_corrupt_tensors_file_is_a_weights_error(tmp_path):
    save_tensors(tmp_path / "w.safetensors", {"w": torch.ones(8)})
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:20])
    with pytest.raises(WeightsError, match="w.safetensors"):
        load_tensors(tmp_path / "w.safetensors")


def test_open_run_rules(tmp_path):
    out = tmp_path / "run"
    run = open_run(out, "seed: 1\n", resume=False)
    assert not out.exists()  # checks write nothing
    run.start("seed: 1\n")
    with pytest.raises(RunFolderError, match="unfinished run"):
        open_run(out, "seed: 1\n", resume=False)
    assert open_run(out, "seed: 1\n", resume=True).path == out
    with pytest.raises(RunFolderError, match="seed"):
        open_run(out, "seed: 2\n", resume=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "f").write_text("x")
    with pytest.raises(RunFolderError, match="holds no madapt run"):
        open_run(tmp_path / "junk", "seed: 1\n", resume=False)
    with pytest.raises(RunFolderError, match="no run is there"):
        open_run(tmp_path / "new", "seed: 1\n", resume=True)
