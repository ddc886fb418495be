"""The task loop: matrix shape, deterministic data stream, and exact resume after a crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madapt.continual.engine import batch_indices, run_sequence
from madapt.continual.methods.finetune import Finetune
from madapt.continual.methods.lwf import LwF
from madapt.continual.methods.icarl import ICaRL
from madapt.continual.methods.zeroshot import ZeroShot
from madapt.runs import Checkpointer


def test_batch_indices_cover_each_epoch_once_and_are_pure():
    n, bs = 10, 4
    first_epoch = [i for step in range(3) for i in batch_indices(n, bs, step, seed=5)][:n]
    assert sorted(first_epoch) == list(range(n))
    assert batch_indices(n, bs, 7, seed=5) == batch_indices(n, bs, 7, seed=5)
    assert batch_indices(n, bs, 0, seed=5) != batch_indices(n, bs, 0, seed=6)


def test_zero_shot_matrix_has_identical_rows(ctx_factory, tmp_path):
    acc = run_sequence(ZeroShot(), ctx_factory(), Checkpointer(tmp_path))
    assert np.asarray(acc).shape == (3, 3)
    assert acc[0] == acc[1] == acc[2]


def test_finetune_changes_all_weights_but_temperature(ctx_factory, tmp_path):
    ctx = ctx_factory()
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    run_sequence(Finetune(), ctx, Checkpointer(tmp_path))
    after = ctx.model.state_dict()
    assert torch.equal(before["logit_scale"], after["logit_scale"])
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert not torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])


class Crash(Exception):
    pass


@pytest.mark.parametrize("method_cls", [Finetune, LwF, ICaRL])
@pytest.mark.parametrize("crash_at", [(0, 3), (1, 2), (2, 4)])
def test_resume_after_crash_reaches_the_same_matrix(ctx_factory, tmp_path, method_cls, crash_at):
    reference = run_sequence(method_cls(), ctx_factory(iterations=5), Checkpointer(tmp_path / "a"))

    order = ["task0", "task1", "task2"]

    def crash(task_name, step, total):
        if (order.index(task_name), step) == crash_at:
            raise Crash

    with pytest.raises(Crash):
        run_sequence(method_cls(), ctx_factory(iterations=5), Checkpointer(tmp_path / "b"), crash)
    # a fresh process would rebuild everything from the config: new context, new method object
    resumed = run_sequence(method_cls(), ctx_factory(iterations=5), Checkpointer(tmp_path / "b"))
    assert resumed == reference
