"""Adapt (seed 003 Algorithm 1) and the fixed-length K/V baseline on the micro CLIP and tiny ViT-B/16."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fewshot_fixtures import make_ctx, micro_task

from madapt.prompting.adapt import Adapt, AdaptConfig, KVFixed, KVFixedConfig
from madapt.prompting.fewshot import Settings, fit, hand_texts
from madapt.prompting.pruning import lowest_live, plan_schedule, token_scores
from madapt.runs import Checkpointer


@pytest.fixture(scope="module")
def micro():
    return micro_task("shape")


def test_plan_keeps_algorithm_1_when_the_training_is_long_enough():
    # OxfordPets: 37 classes x 16 shots / 4 = 148 iterations per epoch, 100 epochs
    plan = plan_schedule(384, 32, start_step=148, total_steps=14_800)
    assert (plan.rate, plan.period, plan.events, plan.adjusted, plan.reaches_target) == (
        4,
        80,
        88,
        False,
        True,
    )


def test_plan_raises_the_rate_when_the_training_is_too_short_and_says_so():
    # EuroSAT: 10 classes x 16 shots / 4 = 40 iterations per epoch; 88 x 80 = 7,040 > 3,960 after warm-up
    plan = plan_schedule(384, 32, start_step=40, total_steps=4_000)
    assert plan.adjusted and plan.reaches_target
    assert (plan.period, plan.rate) == (80, 15)  # 1,980 iterations = 24 pruning steps, ceil(352 / 24) = 15
    assert plan.events * plan.period <= 0.5 * 3_960 and "raised r_p to 15" in plan.note
    kept = plan_schedule(384, 32, 40, 4_000, policy="accept")
    assert not kept.reaches_target and kept.rate == 4 and "ends at 188 tokens" in kept.note  # 49 steps x 4
    tiny = plan_schedule(32, 7, start_step=10, total_steps=20)  # budget 5 < n_k: one period of 5
    assert (tiny.period, tiny.rate, tiny.events) == (5, 25, 1)
    assert plan_schedule(32, 40, 0, 10).events == 0


def test_token_scores_are_equation_6():
    p = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    g = torch.tensor([[0.5, -0.5], [1.0, 1.0]])
    assert token_scores("snip", p, g).tolist() == [0.5, 1.0]  # |1*0.5 - 2*0.5|, |3 - 4|
    assert token_scores("grad_norm", p, g).tolist() == pytest.approx([0.5**0.5, 2**0.5])
    assert token_scores("l2", p, None).tolist() == pytest.approx([5**0.5, 5.0])


def test_lowest_live_ranks_both_towers_skips_dead_tokens_and_normalises_on_request():
    scores = {
        "vision": torch.tensor([[3.0, 0.5], [9.0, 9.0]]),
        "text": torch.tensor([[0.1, 1.0], [0.4, 0.2]]),
    }
    masks = {
        "vision": torch.tensor([[True, True], [True, True]]),
        "text": torch.tensor([[False, True], [True, True]]),
    }
    assert lowest_live(scores, masks, 3) == [("text", 1, 1), ("text", 1, 0), ("vision", 0, 1)]
    # per-tower mean: vision / 5.375, text / (1.6 / 3); vision's 0.5 -> 0.093 is now the lowest
    assert lowest_live(scores, masks, 1, "mean") == [("vision", 0, 1)]
    assert len(lowest_live(scores, {t: torch.zeros(2, 2, dtype=torch.bool) for t in masks}, 3)) == 0
    tie = {"vision": torch.ones(1, 2), "text": torch.ones(1, 2)}
    assert lowest_live(tie, {t: torch.ones(1, 2, dtype=torch.bool) for t in tie}, 1) == [("vision", 0, 0)]


@pytest.mark.parametrize("score", ["snip", "grad_norm", "l2"])
def test_score_accumulation_equals_a_hand_computation(micro, score):
    ctx = make_ctx(micro)
    method = Adapt(AdaptConfig(tokens=3, t_target=20, n_k=3, r_p=2, score=score, start_epoch=0))
    method.setup(ctx)
    blocks = [b for t in ("vision", "text") for b in method.blocks[t]]
    hand = torch.zeros(len(blocks), 3)
    train = micro[1].train
    for step in range(3):
        images, labels = train.batch(range(4 * step, 4 * step + 4))
        params = [b.prompts for b in blocks]
        grads = torch.autograd.grad(method.loss(images, labels, ctx), params)
        for i, (p, g) in enumerate(zip(params, grads)):
            hand[i] += {"snip": (g * p).sum(-1).abs(), "grad_norm": g.norm(dim=-1), "l2": p.norm(dim=-1)}[
                score
            ]
        for b in blocks:
            b.prompts.grad = None
        method.loss(images, labels, ctx).backward()
        ctx.step = step
        if step < 2:
            method.after_backward(ctx)
            got = torch.cat([method.scores["vision"], method.scores["text"]])
            assert torch.allclose(got, hand, rtol=1e-4, atol=1e-7)
    method.after_backward(ctx)  # the third minibatch: prune the 2 lowest of both towers, reset
    lowest = torch.sort(hand.reshape(-1), stable=True).indices[:2].tolist()
    dead = [i for i, b in enumerate(blocks) for j in range(3) if not b.mask[j]]
    assert sorted(i * 3 + j for i, b in enumerate(blocks) for j in range(3) if not b.mask[j]) == sorted(
        lowest
    )
    assert len(dead) == 2 and method.live() == 22
    assert all(float(s.abs().sum()) == 0.0 for s in method.scores.values())


@pytest.mark.parametrize("epochs, steps, adjusted", [(6, 7, False), (4, 3, True)])
def test_training_reaches_exactly_t_target_and_leaves_the_backbone_untouched(micro, epochs, steps, adjusted):
    # 8 classes x 2 shots / batch 4 = 4 iterations per epoch; pool 2 towers x 4 layers x 4 tokens = 32.
    # 6 epochs: 20 iterations after warm-up >= 7 steps x n_k 2 (25 = 6 x 4 + 1: the last step removes 1).
    # 4 epochs: 12 < 14, so the rate rises to ceil(25 / 3) = 9 over the first half (6 iterations).
    ctx = make_ctx(micro, epochs=epochs)
    frozen = {id(p): p.detach().clone() for p in ctx.backbone.model.parameters()}
    method = Adapt(AdaptConfig(tokens=4, t_target=7, n_k=2, r_p=4, lr=0.01))
    entry = fit(method, ctx, micro[1], Settings(epochs=epochs, batch_size=4, seed=1))
    summary = entry["summary"]
    assert method.live() == 7 == summary["live_tokens"]
    assert summary["pruning_steps"] == steps and summary["schedule"]["adjusted"] == adjusted
    assert summary["trainable_params"] == 7 * 128  # micro CLIP: both towers 128 wide
    assert summary["lengths"] == {t: [sum(row) for row in m] for t, m in summary["masks"].items()}
    live = [h["live_tokens"] for h in entry["history"]]
    assert live[0] == 32 and live == sorted(live, reverse=True) and live[-1] == 7  # no pruning in warm-up
    assert all(torch.equal(p, frozen[id(p)]) for p in ctx.backbone.model.parameters() if id(p) in frozen)
    assert all(b.attend == "gather" for bs in method.blocks.values() for b in bs)


def test_all_masks_zero_gives_zero_shot_logits_and_pruned_rows_do_nothing(micro):
    ctx = make_ctx(micro)
    plain = copy.deepcopy(ctx.backbone)
    method = Adapt(AdaptConfig(tokens=4, attend="mask"))
    method.setup(ctx)
    images, _ = micro[1].test.batch(range(5))
    for bs in method.blocks.values():
        for b in bs:
            b.mask.zero_()
    with torch.no_grad():
        got = method.logits(images, ctx)
        text = F.normalize(plain.encode_text(plain.tokenize(hand_texts(ctx))).float(), dim=-1)
        want = (
            plain.model.logit_scale.exp() * F.normalize(plain.encode_image(images).float(), dim=-1) @ text.T
        )
        assert torch.equal(got, want)
        method.blocks["vision"][0].mask[1:] = True
        before = method.logits(images, ctx)
        method.blocks["vision"][0].prompts[0] += 5.0  # slot 0 is pruned
        assert torch.equal(method.logits(images, ctx), before)


class Stop(Exception):
    pass


def test_adapt_killed_mid_epoch_resumes_to_identical_prompts_and_masks(micro, tmp_path):
    settings = Settings(epochs=4, batch_size=4, seed=3, checkpoint_every=3)
    cfg = AdaptConfig(tokens=4, t_target=10, n_k=3, r_p=3, lr=0.01)
    full = Adapt(cfg)
    fit(full, make_ctx(micro, epochs=4), micro[1], settings)

    def stop_at(n):
        def report(done, total):
            if done == n:
                raise Stop

        return report

    ckpt = Checkpointer(tmp_path / "ckpt")
    for n in (8, 13):  # inside epoch 2 (after the step-6 checkpoint) and inside epoch 3
        with pytest.raises(Stop):
            fit(Adapt(cfg), make_ctx(micro, epochs=4), micro[1], settings, ckpt, stop_at(n))
    resumed = Adapt(cfg)
    fit(resumed, make_ctx(micro, epochs=4), micro[1], settings, ckpt)
    for t in ("vision", "text"):
        for a, b in zip(full.blocks[t], resumed.blocks[t]):
            assert torch.equal(a.prompts, b.prompts) and torch.equal(a.mask, b.mask)
    assert resumed.events == full.events


def test_fixed_length_prompts_spread_the_same_budget(micro):
    ctx = make_ctx(micro)
    method = KVFixed(KVFixedConfig(total_tokens=12))
    method.setup(ctx)
    summary = method.summary()
    assert summary["lengths"] == {"vision": [2, 2, 1, 1], "text": [2, 2, 1, 1]}
    assert summary["live_tokens"] == 12 and summary["trainable_params"] == 12 * 128
    assert sum(p.numel() for p in method.trainable_parameters()) == 12 * 128


def test_amp_on_cpu_trains_in_bf16_and_keeps_the_budget(micro):
    ctx = make_ctx(micro, epochs=6)
    method = Adapt(AdaptConfig(tokens=4, t_target=7, n_k=2, r_p=4, lr=0.01))
    entry = fit(method, ctx, micro[1], Settings(epochs=6, batch_size=4, seed=1, amp=True))
    assert method.live() == 7 and all(np.isfinite(h["loss"]) for h in entry["history"])
    assert all(
        b.prompts.dtype == torch.float32 for bs in method.blocks.values() for b in bs
    )  # fp32 master copy
    assert entry["history"][-1]["loss"] < entry["history"][0]["loss"]
