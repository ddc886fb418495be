"""The few-shot loop (`madapt.prompting.fewshot`): Dassl schedule and batches, after_backward, resume.

A toy method (a learnable residual on the zero-shot class embeddings) exercises the loop on the
bundled micro CLIP; zero-shot is checked against a hand computation with the frozen model.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from fewshot_fixtures import make_ctx, micro_task

from madapt.backbones.clip import zero_shot_head
from madapt.config import Strict
from madapt.prompting.adapt import ZeroShot, ZeroShotConfig
from madapt.prompting.fewshot import (
    FewShotContext,
    Settings,
    dassl_schedule,
    epoch_batches,
    fit,
    hand_texts,
    steps_per_epoch,
)
from madapt.runs import Checkpointer


@pytest.fixture(scope="module")
def micro():
    return micro_task("colour")


class ToyConfig(Strict):
    name: Literal["toy"] = "toy"
    lr: float = 0.5
    epochs: int = 3
    batch_size: int = 4


class Toy:
    """A residual on the hand-template class embeddings; records what the loop showed it."""

    Config = ToyConfig
    trains = True

    def __init__(self, cfg: ToyConfig) -> None:
        self.cfg, self.calls = cfg, []

    def setup(self, ctx: FewShotContext) -> None:
        with torch.no_grad():
            self.head = zero_shot_head(ctx.backbone, ctx.classnames, ctx.templates, ensemble=False)
        self.delta = torch.nn.Parameter(0.01 * torch.randn_like(self.head))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.delta]

    def optimizer(self, params: Any, ctx: FewShotContext) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9)

    def logits(self, images: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        feats = F.normalize(ctx.backbone.encode_image(images), dim=-1)
        return ctx.backbone.model.logit_scale.exp() * feats @ F.normalize(self.head + self.delta, dim=-1).T

    def loss(self, images, labels, ctx):
        return F.cross_entropy(self.logits(images, ctx), labels)

    def after_backward(self, ctx: FewShotContext) -> None:
        self.calls.append((ctx.epoch, ctx.step, float(self.delta.grad.abs().sum())))

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.delta.copy_(state["delta"])

    def summary(self) -> dict[str, Any]:
        return {"trainable_params": self.delta.numel()}


def test_dassl_schedule_constant_warmup_epoch_then_cosine_over_all_epochs():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.002}, {"params": [b], "lr": 0.01}], lr=0.002)
    sched = dassl_schedule(opt, epochs=10, warmup_epochs=1, warmup_lr=1e-5)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([1e-5, 1e-5])  # every group at the constant warm-up lr
    assert seen[1] == pytest.approx([0.002, 0.01])  # the cosine restarts its count after warm-up
    for e in range(1, 10):
        factor = 0.5 * (1 + math.cos(math.pi * (e - 1) / 10))
        assert seen[e] == pytest.approx([0.002 * factor, 0.01 * factor])
    assert seen[-1][0] > 0  # T_max = epochs: the last epoch still has a positive lr (Dassl)


def test_epoch_batches_drop_last_and_depend_only_on_seed_and_epoch():
    assert steps_per_epoch(10, 4) == 2 and steps_per_epoch(3, 4) == 1
    batches = epoch_batches(10, 4, seed=1, epoch=0)
    assert [len(b) for b in batches] == [4, 4]
    assert len({i for b in batches for i in b}) == 8  # no repeats within an epoch
    assert batches == epoch_batches(10, 4, seed=1, epoch=0)
    assert batches != epoch_batches(10, 4, seed=1, epoch=1)
    assert batches != epoch_batches(10, 4, seed=2, epoch=0)
    assert sorted(epoch_batches(3, 4, 1, 0)[0]) == [0, 1, 2]  # a set smaller than a batch: one batch, no drop


def test_zero_shot_logits_are_frozen_clip_with_the_hand_template(micro):
    ctx = make_ctx(micro, 0, 1)
    method = ZeroShot(ZeroShotConfig())
    method.setup(ctx)
    images, _ = micro[1].test.batch(range(6))
    model = ctx.backbone.model
    with torch.no_grad():
        text = F.normalize(model.encode_text(ctx.backbone.tokenize(hand_texts(ctx))), dim=-1)
        expected = model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1) @ text.T
        got = method.logits(images, ctx)
    assert torch.allclose(got, expected, atol=1e-5)
    assert hand_texts(ctx)[0] == ctx.templates[0].replace("{}", ctx.classnames[0])


def test_fit_calls_after_backward_with_gradients_each_step_and_follows_the_schedule(micro):
    ctx = make_ctx(micro, 3, 4)
    method = Toy(ToyConfig())
    settings = Settings(epochs=3, batch_size=4, seed=1)
    before = {k: v.clone() for k, v in ctx.backbone.model.state_dict().items()}
    entry = fit(method, ctx, micro[1], settings)
    assert ctx.steps_per_epoch == 5  # 20 shots (2 x 10 classes), batch 4, drop_last
    assert [c[1] for c in method.calls] == list(range(15))  # global 0-based step
    assert [c[0] for c in method.calls] == [0] * 5 + [1] * 5 + [2] * 5
    assert all(c[2] > 0 for c in method.calls)  # the gradient of the batch is there
    assert [h["lr"] for h in entry["history"]] == pytest.approx(
        [1e-5, 0.5, 0.5 * 0.5 * (1 + math.cos(math.pi / 3))]
    )
    assert all(torch.equal(v, ctx.backbone.model.state_dict()[k]) for k, v in before.items())
    assert entry["summary"]["trainable_params"] == method.delta.numel()
    assert 0 <= entry["test"] <= 100 and entry["val"] is not None


class Stop(Exception):
    pass


def test_fit_killed_mid_epoch_resumes_to_the_same_parameters(micro, tmp_path):
    settings = Settings(epochs=3, batch_size=4, seed=2, checkpoint_every=3)
    full = Toy(ToyConfig())
    fit(full, make_ctx(micro, 3, 4), micro[1], settings)

    def stop_at(step: int):
        def report(done: int, total: int) -> None:
            if done == step:
                raise Stop

        return report

    ckpt = Checkpointer(tmp_path / "ckpt")
    for step in (7, 11):  # 7: after the mid-epoch checkpoint at 6; 11: after the epoch-end one at 10
        with pytest.raises(Stop):
            fit(Toy(ToyConfig()), make_ctx(micro, 3, 4), micro[1], settings, ckpt, stop_at(step))
    assert ckpt.load().unit == {"epoch": 2, "batch": 0}
    resumed = Toy(ToyConfig())
    entry = fit(resumed, make_ctx(micro, 3, 4), micro[1], settings, ckpt)
    assert [c[1] for c in resumed.calls] == list(range(10, 15))  # only the steps not yet done
    assert torch.equal(resumed.delta, full.delta)
    assert len(entry["history"]) == 3
