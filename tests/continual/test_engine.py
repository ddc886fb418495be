"""The task loop: the resume contract (state, not only accuracy), hooks, accumulation, protocols."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest
import torch
from cl_helpers import build

from madapt.config import Strict
from madapt.continual.engine import run_sequence
from madapt.continual.method import ContinualMethod
from madapt.continual.methods.finetune import Finetune, ce_loss
from madapt.continual.stream import batch_indices
from madapt.registry import get
from madapt.runs import Checkpointer


def test_batch_indices_cover_each_epoch_once_and_are_pure():
    n, bs = 10, 4
    first_epoch = [i for step in range(3) for i in batch_indices(n, bs, step, seed=5)][:n]
    assert sorted(first_epoch) == list(range(n))
    assert batch_indices(n, bs, 7, seed=5) == batch_indices(n, bs, 7, seed=5)
    assert batch_indices(n, bs, 0, seed=5) != batch_indices(n, bs, 0, seed=6)


def test_zero_shot_matrix_has_identical_rows(ctx_factory, tmp_path):
    acc = run_sequence(build("zeroshot"), ctx_factory(), Checkpointer(tmp_path))
    assert np.asarray(acc).shape == (3, 3)
    assert acc[0] == acc[1] == acc[2]


def test_zero_shot_entries_come_from_the_runs_zero_shot_accuracies(ctx_factory, tmp_path):
    """Datasets predicted by the untouched model reuse the recipe's zero-shot row (no re-evaluation)."""
    given = [11.0, 22.0, 33.0]
    acc = run_sequence(
        build("individual"), ctx_factory(iterations=1), Checkpointer(tmp_path), zero_shot=given.__getitem__
    )
    assert acc[0][1:] == [22.0, 33.0] and acc[1][2] == 33.0
    assert acc[2][2] != 33.0


# --- the resume contract -------------------------------------------------------------------


class Crash(Exception):
    pass


def final_state(method, ctx, ckpt: Checkpointer) -> tuple[list, dict, dict]:
    ctx.artifacts = ckpt.dir / "artifacts"  # the run folder's, as the recipe sets it
    acc = run_sequence(method, ctx, ckpt)
    return acc, {k: v.clone() for k, v in ctx.model.state_dict().items()}, method.state_dict()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, np.asarray(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def crash_then_resume(name: str, ctx_factory, folder, crash_at: tuple[int, int], **options):
    def crash(task_name: str, step: int, total: int) -> None:
        if (int(task_name[-1]), step) == crash_at:
            raise Crash

    ctx = ctx_factory(iterations=5)
    ctx.artifacts = Checkpointer(folder).dir / "artifacts"
    with pytest.raises(Crash):
        run_sequence(build(name, **options), ctx, Checkpointer(folder), crash)
    # a fresh process rebuilds everything from the config: new context, new method object
    return final_state(build(name, **options), ctx_factory(iterations=5), Checkpointer(folder))


METHODS = ["finetune", "individual", "lwf", "lwf_vr", "icarl", "wise_ft", "zscl"]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("crash_at", [(0, 3), (1, 5), (2, 4)])
def test_resume_after_a_crash_reaches_the_same_weights_and_method_state(
    ctx_factory, tmp_path, name, crash_at
):
    """Crash mid-task (after the checkpoint at step 2 or 4) or right after a task's last step."""
    acc, weights, state = final_state(build(name), ctx_factory(iterations=5), Checkpointer(tmp_path / "a"))
    acc2, weights2, state2 = crash_then_resume(name, ctx_factory, tmp_path / "b", crash_at)
    assert acc2 == acc
    assert same(weights2, weights)
    assert same(state2, state)


@pytest.mark.parametrize("name", ["icarl", "zscl"])
def test_skipping_the_method_state_on_resume_is_caught(ctx_factory, tmp_path, name, monkeypatch):
    """The check above can fail: a resume that forgets the method's state gives other weights."""
    _, weights, state = final_state(build(name), ctx_factory(iterations=5), Checkpointer(tmp_path / "a"))
    cls = get("method", name)

    def crash(task_name: str, step: int, total: int) -> None:
        if (task_name, step) == ("task1", 5):
            raise Crash

    with pytest.raises(Crash):
        run_sequence(build(name), ctx_factory(iterations=5), Checkpointer(tmp_path / "b"), crash)
    monkeypatch.setattr(cls, "load_state_dict", lambda self, s: None)
    _, weights2, state2 = final_state(build(name), ctx_factory(iterations=5), Checkpointer(tmp_path / "b"))
    assert not (same(weights2, weights) and same(state2, state))


class GrowConfig(Strict):
    name: Literal["grow"] = "grow"


class Grow(ContinualMethod):
    """A method that adds one adapter per task (as MoE experts do) and records what before_task saw."""

    Config = GrowConfig

    def __init__(self, cfg: GrowConfig) -> None:
        self.cfg = cfg
        self.seen: list[float] = []  # a fingerprint of the model at every before_task call
        self.built = 0

    def setup(self, ctx) -> None:
        ctx.model.adapters = torch.nn.ModuleList()

    def grow_to(self, ctx, n: int) -> None:
        while self.built < n:
            torch.manual_seed(100 + self.built)
            ctx.model.adapters.append(
                torch.nn.Linear(ctx.model.visual.output_dim, ctx.model.visual.output_dim)
            )
            self.built += 1

    def trainable_parameters(self, model):
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(model.adapters[-1].parameters())
        for p in params:
            p.requires_grad_(True)
        return [{"params": params, "lr": 0.01}]

    def before_task(self, ctx) -> None:
        self.seen.append(float(sum(p.detach().double().sum() for p in ctx.model.parameters())))
        self.grow_to(ctx, ctx.task + 1)
        self._ctx = ctx

    def loss(self, batch, ctx):
        images, labels = batch
        feats = ctx.model.encode_image(images)
        for adapter in ctx.model.adapters:
            feats = feats + adapter(feats)
        text = ctx.text_head(ctx.model, ctx.task, ensemble=False)
        return torch.nn.functional.cross_entropy(
            100 * torch.nn.functional.normalize(feats, dim=-1) @ text.T, labels
        )

    def state_dict(self) -> dict[str, Any]:
        return {"built": self.built, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grow_to(self._ctx if hasattr(self, "_ctx") else self.ctx_for_load, int(state["built"]))
        self.seen = [float(s) for s in state["seen"]]


def test_modules_added_per_task_come_back_on_resume_and_before_task_sees_the_task_start(
    ctx_factory, tmp_path
):
    def make(ctx):
        method = Grow(GrowConfig())
        method.ctx_for_load = ctx
        return method

    ctx = ctx_factory(iterations=5)
    ref = make(ctx)
    run_sequence(ref, ctx, Checkpointer(tmp_path / "a"))
    reference = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    assert ref.built == 3 and len(ref.seen) == 3

    def crash(task_name: str, step: int, total: int) -> None:
        if (task_name, step) == ("task2", 3):  # two adapters exist, the third is half trained
            raise Crash

    ctx_b = ctx_factory(iterations=5)
    with pytest.raises(Crash):
        run_sequence(make(ctx_b), ctx_b, Checkpointer(tmp_path / "b"), crash)
    ctx_c = ctx_factory(iterations=5)
    resumed = make(ctx_c)
    run_sequence(resumed, ctx_c, Checkpointer(tmp_path / "b"))
    assert resumed.seen == ref.seen  # before_task saw exactly the task-start model, also on resume
    assert same({k: v for k, v in ctx_c.model.state_dict().items()}, reference)
    assert torch.equal(ctx_c.model.adapters[0].weight, ctx.model.adapters[0].weight)


# --- hooks --------------------------------------------------------------------------------


def test_a_method_chooses_its_optimizer_schedule_and_parameter_groups(ctx_factory, tmp_path):
    used: dict[str, Any] = {}

    class SGDFinetune(Finetune):
        def trainable_parameters(self, model):
            params = super().trainable_parameters(model)
            visual = [p for n, p in model.named_parameters() if n.startswith("visual.") and p.requires_grad]
            ids = {id(p) for p in visual}
            return [{"params": visual, "lr": 0.0}, {"params": [p for p in params if id(p) not in ids]}]

        def optimizer(self, params, ctx):
            used["optimizer"] = torch.optim.SGD(params, lr=ctx.lr, momentum=0.9)
            return used["optimizer"]

        def schedule(self, optimizer, ctx):
            return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=1)

    ctx = ctx_factory(iterations=2)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    run_sequence(SGDFinetune(Finetune.Config()), ctx, Checkpointer(tmp_path))
    after = ctx.model.state_dict()
    assert isinstance(used["optimizer"], torch.optim.SGD)
    assert torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])  # its group has lr 0
    assert not torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])


def test_finetune_changes_all_weights_but_temperature(ctx_factory, tmp_path):
    ctx = ctx_factory()
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    run_sequence(build("finetune"), ctx, Checkpointer(tmp_path))
    after = ctx.model.state_dict()
    assert torch.equal(before["logit_scale"], after["logit_scale"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(before) - {"logit_scale"}


class SGDFinetune(Finetune):
    """Plain SGD, so the comparison sees the gradients themselves: Adam would turn float noise on
    parameters whose exact gradient is zero (text positions after end-of-text) into full steps."""

    def optimizer(self, params, ctx):
        return torch.optim.SGD(params, lr=0.5)


@pytest.mark.parametrize("k", [2, 3])
def test_gradient_accumulation_equals_one_batch_up_to_float_order(ctx_factory, tmp_path, k):
    """k micro-batches of batch/k give the same step as one batch (ZSCL's CE is a batch mean)."""
    one = ctx_factory(iterations=3)
    run_sequence(SGDFinetune(Finetune.Config()), one, Checkpointer(tmp_path / "one"))
    acc = ctx_factory(iterations=3, accumulate=k)
    run_sequence(SGDFinetune(Finetune.Config()), acc, Checkpointer(tmp_path / "acc"))
    a, b = one.model.state_dict(), acc.model.state_dict()
    moved = {n: float((a[n] - one.pretrained[n]).abs().max()) for n in a}
    assert max(moved.values()) > 1e-3
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5 * max(1.0, float(a[n].abs().max())), msg=n)


def test_accumulation_calls_loss_once_per_micro_batch(ctx_factory, tmp_path):
    sizes: list[tuple[int, int, int]] = []

    class Probe(Finetune):
        def loss(self, batch, ctx):
            sizes.append((ctx.step, ctx.micro_batch, len(batch[0])))
            return ce_loss(batch, ctx)

    run_sequence(Probe(Finetune.Config()), ctx_factory(iterations=2, accumulate=3), Checkpointer(tmp_path))
    assert sizes[:6] == [(0, 0, 2), (0, 1, 2), (0, 2, 2), (1, 0, 2), (1, 1, 2), (1, 2, 2)]


# --- evaluation protocols -----------------------------------------------------------------


class Recorder(Finetune):
    trains = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.calls: list[tuple[int | None, bool, int]] = []

    def logits(self, images, task, ctx):
        out = super().logits(images, task, ctx)
        self.calls.append((task, ctx.task_id_known, out.shape[1]))
        return out


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("off", {(0, True, 3), (1, True, 2), (2, True, 4)}),
        ("union", {(None, False, 9)}),
        ("per_dataset", {(0, False, 3), (1, False, 2), (2, False, 4)}),
    ],
)
def test_task_agnostic_modes_decide_label_space_and_task_identity(ctx_factory, tmp_path, mode, expected):
    method = Recorder(Finetune.Config())
    run_sequence(method, ctx_factory(task_agnostic=mode), Checkpointer(tmp_path))
    assert set(method.calls) == expected
