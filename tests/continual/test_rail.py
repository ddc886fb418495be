"""RAIL (seed 002's baseline): the closed forms against RAIL's own recursions, the fusion rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cl_helpers import build
from test_engine import final_state, same

from madapt.continual.engine import run_sequence
from madapt.runs import Checkpointer


def train_features(method, ctx, t):
    task = ctx.tasks[t]
    images = torch.stack([task.train[i][0] for i in range(len(task.train))])
    labels = torch.stack([task.train[i][1] for i in range(len(task.train))]) + task.class_offset
    with torch.no_grad():
        return method.features_of(images, ctx), labels


def test_primal_equals_rails_recursive_least_squares_over_two_tasks(ctx_factory, tmp_path):
    ctx = ctx_factory()
    ctx.tasks = ctx.tasks[:2]
    method = build("rail", hidden=64)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    lam, proj = 0.1, method._expansion.double()
    # primal_RAIL.py: R_0 = (X0'X0 + λI)^-1, W = R_0 X0'Y0; then per batch of the next task
    # R <- R - R X'(I + X R X')^-1 X R,  W <- [W, 0] + R X'(Y - X W)
    x0, y0 = train_features(method, ctx, 0)
    phi0 = torch.relu(x0.double() @ proj)
    r = torch.linalg.inv(phi0.T @ phi0 + lam * torch.eye(64, dtype=torch.float64))
    w = r @ phi0.T @ F.one_hot(y0, 3).double()
    x1, y1 = train_features(method, ctx, 1)
    w = torch.cat([w, torch.zeros(64, 2, dtype=torch.float64)], dim=1)
    for batch in torch.arange(len(y1)).split(5):
        phi = torch.relu(x1[batch].double() @ proj)
        r = (
            r
            - r
            @ phi.T
            @ torch.linalg.pinv(torch.eye(len(batch), dtype=torch.float64) + phi @ r @ phi.T)
            @ phi
            @ r
        )
        w = w + r @ phi.T @ (F.one_hot(y1[batch], 5).double() - phi @ w)
    torch.testing.assert_close(method.weights.double(), w, atol=1e-4, rtol=1e-4)


def test_dual_is_kernel_ridge_regression_over_every_stored_feature(ctx_factory, tmp_path):
    ctx = ctx_factory()
    method = build("rail", variant="dual")
    run_sequence(method, ctx, Checkpointer(tmp_path))
    feats = torch.cat([train_features(method, ctx, t)[0] for t in range(3)])
    labels = torch.cat([train_features(method, ctx, t)[1] for t in range(3)])
    assert torch.equal(method.labels, labels)
    torch.testing.assert_close(method.features, feats, atol=1e-5, rtol=1e-5)
    feats = method.features.double()  # K is ill-conditioned at λ = 0.001: compare on the same inputs
    k = torch.exp(-0.1 * torch.cdist(feats, feats).square())
    alpha = torch.linalg.solve(
        k + 0.001 * torch.eye(len(k), dtype=torch.float64), F.one_hot(labels, 9).double()
    )
    torch.testing.assert_close(method.weights.double(), alpha, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["primal", "dual"])
def test_fusion_touches_only_images_zero_shot_puts_in_a_learned_domain(ctx_factory, tmp_path, variant):
    ctx = ctx_factory()
    method = build("rail", variant=variant, hidden=32)
    ctx.task = 0
    method.after_task(ctx)
    images = torch.cat([torch.stack([ctx.tasks[t].test[i][0] for i in range(8)]) for t in range(3)])
    with torch.no_grad():
        feats = method.features_of(images, ctx)
        # a zero-shot head that sends image 0 to an unlearned class and image 1 to a learned one
        head = F.normalize(torch.randn(9, feats.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1)
        head[8], head[0] = feats[0], feats[1]
        method._head = head
        got = method.logits(images, None, ctx)
        zs = F.softmax(100.0 * feats @ head.T, dim=-1)
        reg = method.regression(feats, ctx)
    learned = zs.argmax(-1) < 3
    assert learned.any() and (~learned).any()
    torch.testing.assert_close(got[~learned], zs[~learned])
    torch.testing.assert_close(got[learned][:, :3], 0.1 * zs[learned][:, :3] + 0.9 * reg[learned])
    torch.testing.assert_close(got[learned][:, 3:], 0.1 * zs[learned][:, 3:])
    with torch.no_grad():  # with a task id: that task's columns of the same scores
        torch.testing.assert_close(method.logits(images, 1, ctx), got[:, 3:5])


class Crash(Exception):
    pass


def test_clip_never_changes_and_a_crash_resumes_to_the_same_regressor(ctx_factory, tmp_path, monkeypatch):
    from madapt.continual.methods.rail import RAIL

    acc, weights, state = final_state(build("rail", hidden=32), ctx_factory(), Checkpointer(tmp_path / "a"))
    assert same(weights, ctx_factory().pretrained)  # CLIP itself never moves
    original = RAIL.after_task

    def crash_on_the_last_task(self, ctx):
        if ctx.task == 2:
            raise Crash
        original(self, ctx)

    monkeypatch.setattr(RAIL, "after_task", crash_on_the_last_task)
    with pytest.raises(Crash):
        run_sequence(build("rail", hidden=32), ctx_factory(), Checkpointer(tmp_path / "b"))
    monkeypatch.setattr(RAIL, "after_task", original)
    acc2, _, state2 = final_state(build("rail", hidden=32), ctx_factory(), Checkpointer(tmp_path / "b"))
    assert acc2 == acc and same(state2, state)
