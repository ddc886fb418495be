"""Each baseline's defining behaviour as ZSCL's code runs it (issue 10, "Baselines as ZSCL's code
runs them"; reference notes §4), on the tiny CLIP.

Where it is clearer than a whole run, the tests drive a method by hand: ``before_task`` -> a few
optimizer steps on ``loss`` (then ``after_step``) -> ``after_task``, exactly the calls the engine makes.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cl_helpers import build

from conftest import CAPTIONS
from madapt.continual.engine import run_sequence
from madapt.continual.methods import icarl as icarl_module
from madapt.continual.methods import lwf as lwf_module
from madapt.continual.methods import zscl as zscl_module
from madapt.continual.methods.finetune import ce_loss
from madapt.continual.stream import train_batches
from madapt.runs import Checkpointer, join_state, split_state


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def first_batch(ctx, task: int | None = None):
    task = ctx.task if task is None else task
    return next(train_batches(ctx.tasks[task].train, ctx.settings, task, 0))


def train(method, ctx, task: int, steps: int, record=None) -> None:
    """The engine's inner loop for one task, without checkpoints or evaluation."""
    if task == 0:
        method.setup(ctx)
    ctx.task = task
    ctx.model.train()
    method.before_task(ctx)
    optimizer = torch.optim.AdamW(method.trainable_parameters(ctx.model), lr=1e-3, weight_decay=0.0)
    for step, (images, labels) in enumerate(train_batches(ctx.tasks[task].train, ctx.settings, task, 0)):
        if step == steps:
            break
        ctx.step = step
        loss = method.loss((images, labels), ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(ctx)
        if record is not None:
            record(step)
    ctx.step = steps


def grads_of(loss: torch.Tensor, model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


def is_text(name: str) -> bool:
    return not name.startswith("visual.") and name != "logit_scale"


def distill_both_ways(teacher, student, images, text_feats, t=2.0):
    """ZSCL's pair of distillation terms, written out (image->text and its transpose)."""
    with torch.no_grad():
        tl = 100 * F.normalize(teacher.encode_image(images).float(), dim=-1) @ text_feats.T
    sl = 100 * F.normalize(student.encode_image(images).float(), dim=-1) @ text_feats.T

    def kd(a, b):
        return -(F.softmax(a / t, dim=-1) * F.log_softmax(b / t, dim=-1)).sum(-1).mean() * t * t

    return kd(tl, sl) + kd(tl.T, sl.T)


# --- LwF / LwF-VR


def test_lwf_teacher_is_the_task_start_model_and_pretrained_on_the_first_task(ctx_factory):
    ctx = ctx_factory()
    method = build("lwf")
    train(method, ctx, 0, steps=1)
    first_teacher = weights(method.teacher)
    assert all(torch.equal(first_teacher[n], ctx.pretrained[n]) for n in first_teacher)
    method.after_task(ctx)
    after_task0 = weights(ctx.model)
    ctx.task = 1
    method.before_task(ctx)
    assert all(torch.equal(weights(method.teacher)[n], after_task0[n]) for n in after_task0)


def test_lwf_distils_current_task_texts_of_the_teacher_on_its_own_image_stream(ctx_factory, monkeypatch):
    ctx = ctx_factory()
    method = build("lwf")
    train(method, ctx, 0, steps=2)
    method.after_task(ctx)
    ctx.task, ctx.step = 1, 0
    method.before_task(ctx)
    assert method.text_feats.shape[0] == ctx.tasks[1].n_classes  # the current task's classes only
    with torch.no_grad():
        want = F.normalize(method.teacher.encode_text(ctx.class_tokens(1, ensemble=False)).float(), dim=-1)
    torch.testing.assert_close(method.text_feats, want)
    batch = first_batch(ctx)
    distill_images = method.images.images(0)
    assert not torch.equal(distill_images, batch[0])  # ZSCL's reference loader is its own stream
    with torch.no_grad():
        for p in ctx.model.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    extra = method.loss(batch, ctx) - ce_loss(batch, ctx)
    torch.testing.assert_close(
        extra,
        distill_both_ways(method.teacher, ctx.model, distill_images, method.text_feats),
        rtol=1e-5,
        atol=1e-6,
    )
    monkeypatch.setattr(lwf_module, "ce_loss", lambda batch, ctx: torch.zeros(()))
    only = grads_of(method.loss(batch, ctx), ctx.model)
    assert all(only[n] is None for n in only if is_text(n))  # the student's text tower is not in the term
    assert only["visual.proj"] is not None and only["visual.proj"].abs().sum() > 0


def test_lwf_term_has_no_gradient_when_student_equals_teacher(ctx_factory, monkeypatch):
    ctx = ctx_factory()
    method = build("lwf")
    ctx.task, ctx.step = 0, 0
    method.trainable_parameters(ctx.model)
    method.before_task(ctx)
    monkeypatch.setattr(lwf_module, "ce_loss", lambda batch, ctx: torch.zeros(()))
    g = grads_of(method.loss(first_batch(ctx), ctx), ctx.model)
    assert max(float(v.abs().max()) for v in g.values() if v is not None) < 1e-4


def test_lwf_vr_uses_zscls_virtual_vocabulary_and_no_class_name(ctx_factory):
    ctx = ctx_factory()
    tok = ctx.backbone.tokenizer
    method = build("lwf_vr", sentences=50)
    seqs = []
    for task in range(2):
        ctx.task = task
        method.before_task(ctx)
        seqs.append(method.distill_tokens(ctx))
    tokens = seqs[0]
    assert torch.equal(seqs[0], seqs[1])  # drawn once per run from the seed
    assert tokens.shape == (50, tok.context_length)
    assert (tokens[:, 0] == tok.sot_token_id).all() and (tokens[:, 11] == tok.eot_token_id).all()
    assert (tokens[:, 12:] == 0).all() and int(tokens[:, 1:11].max()) < tok.vocab_size
    assert len({tuple(r) for r in tokens[:, 1:11].tolist()}) == 50
    class_ids = set(ctx.class_tokens(0, ensemble=False)[:, 1:-1].flatten().tolist()) - {0}
    assert method.text_feats.shape[0] == 50
    assert not class_ids <= set(tokens[:, 1:11].flatten().tolist())  # not built from the class prompts
    other = ctx_factory()
    other.settings.seed = 4
    assert not torch.equal(method.distill_tokens(other), tokens)


# --- WiSE-FT


@pytest.mark.parametrize("alpha", [None, 0.0, 1.0])
def test_wise_ft_interpolates_between_task_start_and_fine_tuned(ctx_factory, alpha):
    ctx = ctx_factory()
    method = build("wise_ft") if alpha is None else build("wise_ft", alpha=alpha)
    assert method.cfg.alpha == (0.8 if alpha is None else alpha)  # ZSCL's --wise_ft_alpha 0.8
    start = weights(ctx.model)
    train(method, ctx, 0, steps=2)
    tuned = weights(ctx.model)
    method.after_task(ctx)
    after = weights(ctx.model)
    assert not torch.equal(start["visual.conv1.weight"], tuned["visual.conv1.weight"])
    a = method.cfg.alpha
    for name in after:
        torch.testing.assert_close(after[name], a * tuned[name] + (1 - a) * start[name], rtol=0, atol=1e-7)


# --- ZSCL


def test_zscl_weight_ensemble_is_the_running_mean_every_avg_freq_steps(ctx_factory):
    ctx = ctx_factory(iterations=8)
    method = build("zscl", average_every=3)
    recorded = [weights(ctx.model)]

    def record(step: int) -> None:  # ZSCL averages {task start, after steps 0, 3, 6, final weights}
        if step % 3 == 0:
            recorded.append(weights(ctx.model))

    train(method, ctx, 0, steps=8, record=record)
    final = weights(ctx.model)
    recorded.append(final)
    method.after_task(ctx)
    assert len(recorded) == 5
    for name, value in weights(ctx.model).items():
        expected = torch.stack([r[name] for r in recorded]).mean(dim=0)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(final["visual.conv1.weight"], weights(ctx.model)["visual.conv1.weight"])


def test_zscl_l2_term_is_the_summed_squared_distance_to_task_start(ctx_factory):
    ctx = ctx_factory()
    method = build("zscl", image_weight=0.0, text_weight=0.0, l2=1.0, weight_ensemble=False)
    train(method, ctx, 0, steps=2)
    method.after_task(ctx)
    ctx.task, ctx.step = 1, 0
    method.before_task(ctx)
    start = weights(ctx.model)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = first_batch(ctx)
    now = weights(ctx.model)
    expected = sum(((now[n] - start[n]) ** 2).sum() for n in now if n != "logit_scale")
    torch.testing.assert_close(method.loss(batch, ctx) - ce_loss(batch, ctx), expected, rtol=1e-4, atol=1e-6)
    assert float(expected) > 0


def test_zscl_teacher_is_the_pretrained_model_on_every_task(ctx_factory):
    ctx = ctx_factory()
    pretrained = copy.deepcopy(ctx.model).eval()
    method = build("zscl")
    for task in range(2):
        train(method, ctx, task, steps=2)
        method.after_task(ctx)
    ctx.task = 2
    method.before_task(ctx)
    images = first_batch(ctx)[0]
    tokens = ctx.backbone.tokenize(CAPTIONS)
    with torch.no_grad():
        assert not torch.allclose(ctx.model.encode_image(images), pretrained.encode_image(images))
        torch.testing.assert_close(method.teacher.encode_image(images), pretrained.encode_image(images))
        expected = F.normalize(pretrained.encode_text(tokens).float(), dim=-1)
    torch.testing.assert_close(method.caption_feats, expected)


def test_zscl_distillation_sends_no_gradient_to_the_student_text_tower(ctx_factory, monkeypatch):
    ctx = ctx_factory()
    method = build("zscl", l2=0.0)
    method.trainable_parameters(ctx.model)
    ctx.task, ctx.step = 0, 1
    method.before_task(ctx)
    with torch.no_grad():  # student != teacher, so the distillation gradient is not zero
        for p in ctx.model.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = first_batch(ctx)
    with_ce = grads_of(method.loss(batch, ctx), ctx.model)
    assert any(g is not None and g.abs().sum() > 0 for n, g in with_ce.items() if is_text(n))
    monkeypatch.setattr(zscl_module, "ce_loss", lambda batch, ctx: torch.zeros(()))
    only_distill = grads_of(method.loss(batch, ctx), ctx.model)
    text = [n for n in only_distill if is_text(n)]
    assert "token_embedding.weight" in text and "text_projection" in text
    assert all(only_distill[n] is None for n in text)
    assert only_distill["visual.proj"] is not None and only_distill["visual.proj"].abs().sum() > 0


# --- iCaRL


def zscl_herding(features: np.ndarray, m: int) -> list[int]:
    """ZSCL's DynamicDataset.constructExampleSet loop, with np.delete, mapped back to row ids."""
    feats, ids = features.copy(), list(range(len(features)))
    mean = features.mean(axis=0)
    picked, total = [], None
    for k in range(min(m, len(features))):
        if k == 0:
            i = int(np.argmin(np.sum((mean - feats) ** 2, axis=1)))
            total = feats[i].copy()
        else:
            i = int(np.argmin(np.sum((mean - (1 / (k + 1)) * (feats + total)) ** 2, axis=1)))
            total += feats[i]
        picked.append(ids[i])
        feats = np.delete(feats, i, axis=0)
        del ids[i]
    return picked


def test_herding_matches_zscls_loop():
    feats = F.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert icarl_module.herding(feats, 15) == zscl_herding(feats.double().numpy(), 15)


def test_icarl_memory_follows_zscls_dynamic_dataset(ctx_factory, monkeypatch):
    ctx = ctx_factory()
    method = build("icarl", memory_size=10)
    seen_features = []
    real = icarl_module.herding
    monkeypatch.setattr(icarl_module, "herding", lambda f, m: seen_features.append(f) or real(f, m))
    ctx.task = 0
    method.before_task(ctx)
    method.after_task(ctx)
    assert method.memory == [(0, list(range(10)))]  # first task: its first K images, no herding
    train(method, ctx, 1, steps=1)
    method.after_task(ctx)
    assert method.memory[0] == (0, list(range(5)))  # cut to K // 2
    with torch.no_grad():
        feats = F.normalize(
            ctx.model.encode_image(ctx.tasks[1].distill_images.batch(range(24))[0]).float(), dim=-1
        )
    torch.testing.assert_close(seen_features[-1], feats)  # herding on the model just trained
    assert method.memory[1] == (1, real(feats, 5))
    ctx.task = 2
    method.before_task(ctx)
    method.after_task(ctx)
    # K // 3 = 3 per old list, K - K // 3 = 7 new (ZSCL's arithmetic: 13 > K once three are seen)
    assert [len(idx) for _, idx in method.memory] == [3, 3, 7]


def test_icarl_replays_the_memory_in_order_against_the_pretrained_teacher(ctx_factory):
    ctx = ctx_factory()
    method = build("icarl", memory_size=10, replay_batch_size=4)
    train(method, ctx, 0, steps=1)
    batch = first_batch(ctx)
    assert torch.equal(method.loss(batch, ctx), ce_loss(batch, ctx))  # first task: plain fine-tuning
    method.after_task(ctx)
    ctx.task = 1
    method.before_task(ctx)
    assert all(
        torch.equal(weights(method.teacher)[n], ctx.pretrained[n])
        for n in ctx.pretrained
        if n in weights(method.teacher)
    )
    memory = ctx.tasks[0].distill_images.batch(range(10))[0]
    chunks = [method.replay.images(s) for s in range(4)]
    assert [len(c) for c in chunks] == [4, 4, 2, 4]  # consecutive chunks, the last one partial, cycling
    assert torch.equal(torch.cat(chunks[:3]), memory) and torch.equal(chunks[3], memory[:4])
    assert method.text_feats.shape[0] == ctx.tasks[1].n_classes
    ctx.step = 1
    batch = first_batch(ctx)
    extra = method.loss(batch, ctx) - ce_loss(batch, ctx)
    torch.testing.assert_close(
        extra,
        distill_both_ways(method.teacher, ctx.model, chunks[1], method.text_feats),
        rtol=1e-5,
        atol=1e-6,
    )


# --- Individual fine-tuning


@pytest.mark.parametrize("name, restarts", [("individual", True), ("finetune", False)])
def test_individual_ft_starts_every_task_from_pretrained(ctx_factory, name, restarts):
    ctx = ctx_factory()
    method = build(name)
    train(method, ctx, 0, steps=2)
    method.after_task(ctx)
    ctx.task = 1
    method.before_task(ctx)
    state = ctx.model.state_dict()
    assert all(torch.equal(state[k], ctx.pretrained[k]) for k in state) == restarts


def test_individual_ft_predicts_each_task_with_its_own_expert(ctx_factory, tmp_path):
    """Seed 002's Individual FT: row i holds expert j on task j (j <= i), zero-shot beyond."""
    ctx = ctx_factory(iterations=4)
    method = build("individual")
    matrix = run_sequence(method, ctx, Checkpointer(tmp_path / "ind"))
    zero_shot = run_sequence(build("zeroshot"), ctx_factory(iterations=4), Checkpointer(tmp_path / "zs"))
    for i in range(3):
        for j in range(3):
            expected = matrix[j][j] if j <= i else zero_shot[0][j]
            assert matrix[i][j] == pytest.approx(expected), (i, j)
    assert method.experts == [0, 1, 2]
    assert sorted(p.name for p in ctx.artifacts.iterdir()) == [f"expert_{t}.safetensors" for t in range(3)]
    images, _ = first_batch(ctx, task=0)
    with torch.no_grad():
        got = method.logits(images, 0, ctx)
        last = ctx.clip_logits(ctx.model, images, 0)
        expert0 = copy.deepcopy(ctx.model)
        expert0.load_state_dict(method.expert(0))
        ctx.forget_heads()
        want = ctx.clip_logits(expert0, images, 0)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, last)


# --- What every method may change, and its state through a checkpoint


TRAINING = ["finetune", "individual", "lwf", "lwf_vr", "icarl", "wise_ft", "zscl"]


@pytest.mark.parametrize("name", TRAINING + ["zeroshot"])
def test_training_methods_change_both_towers_but_not_the_temperature(ctx_factory, tmp_path, name):
    ctx = ctx_factory(iterations=2)
    before = weights(ctx.model)
    run_sequence(build(name), ctx, Checkpointer(tmp_path))
    after = weights(ctx.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == (set() if name == "zeroshot" else set(before) - {"logit_scale"})


def same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_state, a, b))
    return a == b


@pytest.mark.parametrize("name", TRAINING)
def test_method_state_round_trips_through_a_checkpoint(ctx_factory, tmp_path, name):
    ctx = ctx_factory()
    method = build(name)
    train(method, ctx, 0, steps=2)
    method.after_task(ctx)
    task_start = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    train(method, ctx, 1, steps=2)  # mid-task: memories and averages hold state
    state = method.state_dict()
    mid_task = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    tensors, skeleton = split_state({"method": state})
    assert same_state(join_state(json.loads(json.dumps(skeleton)), tensors)["method"], state)
    Checkpointer(tmp_path).save({"task": 1, "step": 2, "phase": "train"}, {"method": state})
    restored = Checkpointer(tmp_path).load().state["method"]
    # a fresh object, rebuilt the way the engine resumes (before_task on the task-start model),
    # behaves identically
    twin = build(name)
    twin.setup(ctx)
    twin.load_state_dict(restored)
    ctx.model.load_state_dict(task_start)
    twin.before_task(ctx)
    ctx.model.load_state_dict(mid_task)
    twin.load_state_dict(restored)
    assert same_state(twin.state_dict(), state)
    ctx.step = 3
    batch = first_batch(ctx)
    torch.testing.assert_close(twin.loss(batch, ctx), method.loss(batch, ctx), rtol=0, atol=0)
