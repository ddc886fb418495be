"""AwoF (seed 000 ch. 3): the proximity algebra against eqs. 3.3-3.12 written as loops, the loss on a
tiny real CLIP (zero at the teachers, the weights of eq. 3.11, cached = live teachers, the
ablation switches), which tensors a step changes, and bit-for-bit resume through the engine."""

from __future__ import annotations

import math

import pytest
import torch
from cl_helpers import build
from test_engine import crash_then_resume, final_state, same

from madapt.continual import graph
from madapt.continual.engine import run_sequence
from madapt.continual.methods.awof import AwoF
from madapt.continual.methods.finetune import ce_loss
from madapt.runs import Checkpointer

SMALL = {"reference_batch_size": 4, "text_batch_size": 4}


def awof(**options):
    return build("awof", **{**SMALL, **options})


# --- the algebra: eqs. 3.3-3.7 as loops -------------------------------------------------------


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def brute_force(images: torch.Tensor, texts: torch.Tensor, tau: float, tau2: float):
    """p1 (softmax of cos / tau over the other modality) and p2 (eq. 3.5 cosine of p1 rows, eq. 3.7
    softmax over the other vertices of the same modality), one vertex at a time."""

    def first(rows, cols):
        out = []
        for u in rows:
            sims = [math.exp(cos(u, v) / tau) for v in cols]
            out.append([s / sum(sims) for s in sims])
        return torch.tensor(out, dtype=torch.float64)

    def second(p1):
        out = []
        for i in range(len(p1)):
            sims = [math.exp(cos(p1[i], p1[j]) / tau2) for j in range(len(p1)) if j != i]
            out.append([s / sum(sims) for s in sims])
        return torch.tensor(out, dtype=torch.float64)

    fi, ft = first(images, texts), first(texts, images)
    return fi, ft, second(fi), second(ft)


@pytest.mark.parametrize("tau, tau2", [(0.5, 1.0), (0.07, 0.2)])
def test_proximities_are_distributions_equal_to_the_equations_written_as_loops(tau, tau2):
    torch.manual_seed(0)
    images, texts = torch.randn(5, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    got = graph.proximities(images.float(), texts.float(), tau, tau2)
    expected = brute_force(images, texts, tau, tau2)
    for log_p, p in zip([got.first_image, got.first_text, got.second_image, got.second_text], expected):
        assert log_p.shape == p.shape
        torch.testing.assert_close(log_p.exp().sum(dim=-1), torch.ones(len(p)), rtol=0, atol=1e-6)
        torch.testing.assert_close(log_p.exp().double(), p, rtol=1e-4, atol=1e-6)


def test_second_order_uses_neighbourhoods_not_the_direct_similarity():
    """Eq. 3.6: two images with equal text neighbourhoods are second-order closest, however far apart."""
    texts = torch.eye(3)
    images = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    p = graph.proximities(images, texts, temperature=0.1, second_temperature=0.01)
    # image 0's neighbours are images 1 and 2 (itself excluded): image 1 shares its neighbourhood
    assert p.second_image[0].exp()[0] > 0.99


def test_weights_follow_eq_3_11_the_farther_teacher_weighs_more():
    d0, dp = torch.tensor([0.1, 2.0, 0.5]), torch.tensor([1.0, 0.3, 0.5])
    w0, wp = graph.teacher_weights("adaptive", d0, dp)
    torch.testing.assert_close(w0, d0.exp() / (d0.exp() + dp.exp()))
    torch.testing.assert_close(w0 + wp, torch.ones(3))
    assert w0[0] < 0.5 < w0[1] and w0[2] == 0.5
    assert graph.teacher_weights("uniform", d0, dp, lam=0.3)[1].tolist() == pytest.approx([0.3] * 3)
    assert (
        graph.teacher_weights("c0", d0, dp)[1].sum() == 0
        and graph.teacher_weights("previous", d0, dp)[0].sum() == 0
    )


@pytest.mark.parametrize("metric", ["kl", "js", "l2"])
def test_distances_are_zero_on_equal_views_and_positive_otherwise(metric):
    torch.manual_seed(1)
    a = graph.proximities(torch.randn(4, 6), torch.randn(3, 6), 0.5)
    b = graph.proximities(torch.randn(4, 6), torch.randn(3, 6), 0.5)
    assert graph.distances(a, a, metric).abs().max() < 1e-6
    assert (graph.distances(a, b, metric) > 1e-4).all()
    assert graph.distances(a, b, metric).shape == (7,)


# --- the loss on a tiny CLIP ------------------------------------------------------------------


def at_task(ctx, task: int, seed: int = 7) -> None:
    """Put ``ctx`` at the start of ``task`` with a task-start model that differs from theta_0."""
    ctx.task = task
    if task > 0:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in ctx.model.parameters():
                p.add_(0.05 * torch.randn_like(p))


def test_the_loss_is_zero_when_the_student_equals_both_teachers_and_grows_when_it_drifts(ctx_factory):
    ctx = ctx_factory()
    method = awof()
    method.before_task(ctx)  # task 0: student = C_0 = C_{i-1}
    assert method.distillation(0, ctx).abs() < 1e-6
    with torch.no_grad():
        ctx.model.visual.proj.add_(0.5 * torch.randn_like(ctx.model.visual.proj))
    assert method.distillation(0, ctx) > 1e-4


def test_adaptive_weights_favour_the_teacher_the_student_has_drifted_from(ctx_factory):
    """Student = C_{i-1}: every vertex's distance to C_{i-1} is 0, so C_0 gets weight > 1/2 and the
    C_{i-1} term is 0; the loss is then the C_0 term weighted by eq. 3.11."""
    ctx = ctx_factory()
    at_task(ctx, 1)
    method = awof()
    method.before_task(ctx)
    tau = 1.0 / ctx.settings.logit_scale
    image_pos, text_pos = method.vertices(0)
    with torch.no_grad():
        images = method.images.images(0)
        student = graph.proximities(
            ctx.model.encode_image(images), ctx.model.encode_text(method.tokens[text_pos]), tau
        )
        views = {
            n: graph.proximities(*method.teacher_embeddings(n, images, image_pos, text_pos, ctx), tau)
            for n in ("c0", "previous")
        }
        d0, dp = graph.distances(views["c0"], student), graph.distances(views["previous"], student)
        w0, _ = graph.teacher_weights("adaptive", d0, dp)
        l0 = graph.vertex_losses(views["c0"], student)
        assert dp.abs().max() < 1e-5 and (w0 > 0.5).all()
        torch.testing.assert_close(method.distillation(0, ctx), (w0 * l0).mean(), rtol=1e-4, atol=1e-7)


def test_cached_and_live_teachers_give_the_same_loss_on_the_same_vertices(ctx_factory):
    ctx = ctx_factory()
    at_task(ctx, 1)
    cached, live = awof(), awof(teacher_cache=False)
    cached.before_task(ctx)
    live.before_task(ctx)
    assert cached.cache and not cached.teachers and live.teachers and not live.cache
    for step in range(3):
        assert cached.vertices(step) == live.vertices(step)
        a, b = cached.distillation(step, ctx), live.distillation(step, ctx)
        assert a > 1e-4
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_the_pool_is_seeded_per_task_and_the_vertices_are_a_pure_function_of_the_step(ctx_factory):
    ctx = ctx_factory()
    a, b = awof(pool_images=6, pool_texts=4), awof(pool_images=6, pool_texts=4)
    a.before_task(ctx)
    b.before_task(ctx)
    assert a.images.dataset.indices == b.images.dataset.indices and len(a.images.dataset) == 6
    assert len(a.tokens) == 4 and a.cache["c0"][0].shape[0] == 6
    assert [a.vertices(s) for s in range(4)] == [b.vertices(s) for s in range(4)]
    assert a.vertices(0) != a.vertices(1)
    ctx.task = 2
    b.before_task(ctx)
    assert b.images.dataset.indices != a.images.dataset.indices


def test_ablation_switches(ctx_factory):
    ctx = ctx_factory()
    at_task(ctx, 1)
    values = {}
    for key, options in {
        "both": {},
        "first": {"second_order": False},
        "second": {"first_order": False},
        "none": {"first_order": False, "second_order": False},
        "c0": {"weighting": "c0"},
        "previous": {"weighting": "previous"},
        "average": {"weighting": "average"},
    }.items():
        method = awof(**options)
        method.before_task(ctx)
        values[key] = float(method.distillation(0, ctx).detach())
    assert values["none"] == 0.0
    assert values["first"] > 0 and values["second"] > 0 and values["both"] > 0
    # student = C_{i-1} here: only-C_{i-1} weighting distils nothing, the others weigh the C_0 term
    assert values["previous"] == pytest.approx(0.0, abs=1e-6)
    assert values["average"] == pytest.approx(0.5 * values["c0"], rel=1e-5)
    assert values["c0"] > values["both"] > values["average"]


def test_a_step_changes_only_the_student_with_adam_and_leaves_both_teachers_bit_identical(ctx_factory):
    ctx = ctx_factory()
    at_task(ctx, 1)
    method = awof(teacher_cache=False)
    method.before_task(ctx)
    teachers = {n: {k: v.clone() for k, v in t.state_dict().items()} for n, t in method.teachers.items()}
    before = {k: v.clone() for k, v in ctx.model.named_parameters()}
    optimizer = method.optimizer(method.trainable_parameters(ctx.model), ctx)
    assert type(optimizer) is torch.optim.Adam
    batch = ctx.current.train.batch(list(range(6)))
    method.loss(batch, ctx).backward()
    assert all(p.grad is None for t in method.teachers.values() for p in t.parameters())
    optimizer.step()
    for name, teacher in method.teachers.items():
        assert same({k: v for k, v in teacher.state_dict().items()}, teachers[name])
    changed = {k for k, p in ctx.model.named_parameters() if not torch.equal(p, before[k])}
    assert "logit_scale" not in changed
    assert {"visual.proj", "text_projection"} <= changed


def test_the_distillation_term_pulls_the_student_back_towards_its_teachers(ctx_factory):
    """Gradient descent on L_PD alone, from a drifted student, lowers L_PD (a sign check of eq. 3.8)."""
    ctx = ctx_factory()
    method = awof()
    method.before_task(ctx)
    with torch.no_grad():
        ctx.model.visual.proj.add_(0.3 * torch.randn_like(ctx.model.visual.proj))
    optimizer = torch.optim.SGD(method.trainable_parameters(ctx.model), lr=0.05)
    start = float(method.distillation(0, ctx).detach())
    for _ in range(5):
        optimizer.zero_grad()
        method.distillation(0, ctx).backward()
        optimizer.step()
    assert float(method.distillation(0, ctx).detach()) < start


def test_gradient_accumulation_adds_the_distillation_once_per_step(ctx_factory):
    ctx = ctx_factory()
    at_task(ctx, 1)
    method = awof()
    method.before_task(ctx)
    batch = ctx.current.train.batch(list(range(6)))
    ctx.settings.accumulate = 2
    ctx.micro_batch = 1
    torch.testing.assert_close(method.loss(batch, ctx), ce_loss(batch, ctx))
    ctx.micro_batch = 0
    torch.testing.assert_close(method.loss(batch, ctx), ce_loss(batch, ctx) + 2 * method.distillation(0, ctx))


# --- through the engine -----------------------------------------------------------------------


def test_a_run_trains_and_leaves_no_teacher_behind(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=3)
    method = awof()
    acc = run_sequence(method, ctx, Checkpointer(tmp_path))
    assert len(acc) == 3 and all(len(row) == 3 for row in acc)
    assert not method.cache and not method.teachers
    assert any(not torch.equal(v, ctx.pretrained[k]) for k, v in ctx.model.state_dict().items())


@pytest.mark.parametrize("teacher_cache", [True, False])
@pytest.mark.parametrize("crash_at", [(0, 3), (1, 5), (2, 4)])
def test_resume_after_a_crash_reaches_the_same_weights(ctx_factory, tmp_path, teacher_cache, crash_at):
    options = {**SMALL, "teacher_cache": teacher_cache}
    acc, weights, state = final_state(
        build("awof", **options), ctx_factory(iterations=5), Checkpointer(tmp_path / "a")
    )
    acc2, weights2, state2 = crash_then_resume("awof", ctx_factory, tmp_path / "b", crash_at, **options)
    assert acc2 == acc
    assert same(weights2, weights)
    assert same(state2, state)


def test_the_resume_check_can_fail_when_the_vertices_depend_on_the_process(
    ctx_factory, tmp_path, monkeypatch
):
    """Negative control: vertices drawn from a per-process counter instead of the step break resume."""
    original, calls = AwoF.vertices, {"n": 0}

    def counted(self, step):
        calls["n"] += 1
        return original(self, calls["n"])

    monkeypatch.setattr(AwoF, "vertices", counted)
    _, weights, _ = final_state(awof(), ctx_factory(iterations=5), Checkpointer(tmp_path / "a"))
    calls["n"] = 0
    _, weights2, _ = crash_then_resume("awof", ctx_factory, tmp_path / "b", (1, 5), **SMALL)
    assert not same(weights2, weights)
