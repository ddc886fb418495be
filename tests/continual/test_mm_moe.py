"""MM-MoE and MoE-Adapters (seed 000 ch. 4): expert layers, routing, growth, freezing, DDAS, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from cl_helpers import build
from test_engine import crash_then_resume, final_state, same

from madapt.continual.engine import run_sequence
from madapt.continual.selector import SelectorConfig, TaskSelector
from madapt.peft.moe import ExpertConfig, expert_layers, inject_expert_layers, top_k_gates
from madapt.runs import Checkpointer

SMALL_MM = {"expert": {"rank": 4}}
SMALL_MOE = {"expert": {"rank": 4, "dropout": 0.1, "scale": 0.1, "bias": True}, "experts": 6}
CIL_CODE = {"experts": 2, "top_k": 2, "freeze_per_task": 0, "shared_router": True, "selector": None}


def base_keys(model) -> set[str]:
    return {k for k in model.state_dict() if ".experts." not in k}


def test_top_k_gates_are_a_distribution_over_at_most_k_experts():
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    for k in (1, 2, 3, 9):
        g = top_k_gates(logits, k)
        torch.testing.assert_close(g.sum(-1), torch.ones(50))
        assert ((g > 0).sum(-1) == min(k, 7)).all()
        # the kept experts are the k largest logits
        assert torch.equal(
            (g > 0), torch.zeros_like(g, dtype=torch.bool).scatter(-1, logits.topk(min(k, 7)).indices, True)
        )


def test_relu_on_the_output_of_a_zero_initialised_expert_is_refused():
    with pytest.raises(ValueError, match="never trains"):
        ExpertConfig(activation="relu", activation_at="output")
    ExpertConfig(activation="gelu", activation_at="output")


def test_experts_sit_beside_the_ffn_on_the_post_attention_residual(tiny_clip):
    model = copy.deepcopy(tiny_clip.model).eval()
    tokens = tiny_clip.tokenize(["a photo of a cat.", "two dogs"])
    images = torch.randn(3, 3, 32, 32)
    ref_img, ref_txt = model.encode_image(images), model.encode_text(tokens)
    layers = inject_expert_layers(model, ["image", "text"], {"image": "first", "text": "eot"})
    gen = torch.Generator().manual_seed(0)
    for layer in layers["image"] + layers["text"]:
        layer.add_experts(2, ExpertConfig(rank=4), gen)
        layer.add_router("uniform", gen)
        layer.top_k = 2
    routing = model.moe_routing
    routing.image = routing.text = 0
    # zero-initialised up projections: a new expert adds exactly nothing
    assert torch.equal(model.encode_image(images), ref_img)
    assert torch.equal(model.encode_text(tokens), ref_txt)
    # make the experts non-zero and check one block against the formula by hand
    block, layer = model.visual.transformer.resblocks[0], layers["image"][0]
    with torch.no_grad():
        for e in layer.experts:
            e.up.weight.normal_(generator=gen)
    x = torch.randn(3, 17, 64)
    with torch.no_grad():
        h = x + block.ls_1(block.attention(q_x=block.ln_1(x)))
        plain = h + block.mlp.forward(block.ln_2.forward(h))  # .forward: without the hooks
        gates = top_k_gates(layer.routers[0](h[:, 0]), 2)
        expected = plain + sum(gates[:, e, None, None] * layer.experts[e](h) for e in range(2))
        assert not torch.allclose(expected, plain)
        torch.testing.assert_close(block(x), expected)
        routing.image = -1  # the frozen CLIP: experts off
        torch.testing.assert_close(block(x), plain)
        # per-sample routers: sample 1 without experts, the others with router 0
        routing.image = torch.tensor([0, -1, 0])
        out = block(x)
        torch.testing.assert_close(out[1], plain[1])
        torch.testing.assert_close(out[[0, 2]], expected[[0, 2]])


def snapshots_after_each_task(method):
    """The model's state right after every task (wraps after_task)."""
    shots, original = [], method.after_task

    def after_task(ctx):
        original(ctx)
        shots.append({k: v.clone() for k, v in ctx.model.state_dict().items()})

    method.after_task = after_task
    return shots


@pytest.mark.parametrize(
    "options", [SMALL_MM, {**SMALL_MM, "multimodal": False}, {**SMALL_MM, "router": "shared"}]
)
def test_mm_moe_trains_only_new_experts_and_routers(ctx_factory, tmp_path, options):
    ctx = ctx_factory(iterations=6)
    original = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    method = build("mm_moe", **options)
    shots = snapshots_after_each_task(method)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    final = ctx.model.state_dict()
    assert base_keys(ctx.model) == set(original)
    assert all(torch.equal(final[k], original[k]) for k in original), "the backbone changed"
    layers = expert_layers(ctx.model)
    assert all(len(layer.experts) == 2 * 3 for layer in layers["image"] + layers["text"])
    for t, shot in enumerate(shots[:-1]):
        own = [k for k in shot if f".experts.experts.{2 * t}." in k or f".experts.experts.{2 * t + 1}." in k]
        router = [k for k in shot if f"routers.{t}." in k or k.endswith(f"bilinear.{t}")]
        assert own and all(torch.equal(shot[k], final[k]) for k in own + router), (
            f"task {t}'s experts moved later"
        )
        # the next task's experts are new (not in this snapshot) and trained where top-k chose them
        later = shots[t + 1]
        ups = [
            k
            for k in later
            if f".experts.experts.{2 * t + 2}.up.weight" in k or f".{2 * t + 3}.up.weight" in k
        ]
        assert ups and all(k not in shot for k in ups)
        assert any(later[k].abs().sum() > 0 for k in ups)


def test_trainable_parameters_match_the_closed_form(ctx_factory, tmp_path):
    """Per task t (0-based), m experts of 2·d·r per block plus a router over (t+1)·m experts:
    d·(t+1)·m linear, or (t+1)·m·D·d bilinear in the last text block (eq. 4.9)."""
    m, r, D = 2, 4, 32
    dv, lv, dt, lt = 64, 2, 32, 2
    for multimodal in (True, False):
        method = build("mm_moe", **SMALL_MM, multimodal=multimodal)
        run_sequence(method, ctx_factory(iterations=2), Checkpointer(tmp_path / str(multimodal)))
        for t in range(3):
            e = (t + 1) * m
            image = lv * (m * 2 * dv * r + dv * e)
            text = lt * (m * 2 * dt * r) + (lt - 1) * dt * e + (e * D * dt if multimodal else dt * e)
            assert method.trainable_counts[t] == image + text


def test_the_multimodal_router_refines_one_class_text_differently_per_image(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=3)
    method = build("mm_moe", **SMALL_MM)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    for layer in expert_layers(ctx.model)["text"]:
        with torch.no_grad():
            for e in layer.experts:
                e.up.weight.normal_()
    ctx.model.eval()
    images = torch.stack([ctx.tasks[0].test[i][0] for i in range(2)])
    with torch.no_grad():
        img, recorded = method._encode(images, ctx.class_tokens(0, ensemble=False), 0, ctx)
        texts = method._pair_texts(img, recorded, 0)  # [2 images, C, D]
    assert texts.shape[:2] == (2, ctx.tasks[0].n_classes)
    assert not torch.allclose(texts[0], texts[1], atol=1e-4)
    star = build("mm_moe", **SMALL_MM, multimodal=False)
    ctx2 = ctx_factory(iterations=3)
    run_sequence(star, ctx2, Checkpointer(tmp_path / "star"))
    with torch.no_grad():
        _, text = star._encode(images, ctx2.class_tokens(0, ensemble=False), 0, ctx2)
    assert text.dim() == 2  # MM-MoE*: one embedding per class, whatever the image


def test_moe_adapters_freezes_the_most_chosen_experts_and_keeps_them(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=6)
    original = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    method = build("moe_adapters", **SMALL_MOE)
    shots = snapshots_after_each_task(method)
    counts = []
    after = method.after_task

    def record(c):
        counts.append([layer.counts.clone() for layer in method._layers()])
        after(c)

    method.after_task = record
    run_sequence(method, ctx, Checkpointer(tmp_path))
    final = ctx.model.state_dict()
    assert all(torch.equal(final[k], original[k]) for k in original), "the backbone changed"
    n_layers = 4
    assert len(method.frozen) == n_layers
    for t in range(3):
        for i, c in enumerate(counts[t]):
            assert c.sum() > 0
            top = set(c.topk(2).indices.tolist())
            assert top <= set(method.frozen[i])
    # experts frozen after task 0 never change again; routers of task t change only in task t
    first = [set(c.topk(2).indices.tolist()) for c in counts[0]]
    layers = method._layers()
    for experts, layer in zip(first, layers):
        prefix = next(k for k, m in ctx.model.named_modules() if m is layer)
        for e in experts:
            for k in (f"{prefix}.experts.{e}.down.weight", f"{prefix}.experts.{e}.up.weight"):
                assert torch.equal(shots[0][k], final[k])
        for t in range(3):
            k = f"{prefix}.routers.{t}.weight"
            assert not torch.equal(shots[t][k], torch.zeros_like(shots[t][k]))
            if t < 2:
                assert torch.equal(shots[t][f"{prefix}.routers.{t + 1}.weight"], torch.zeros_like(final[k]))


def test_noisy_gating_only_while_training(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=3)
    method = build("moe_adapters", **SMALL_MOE)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    images = torch.stack([ctx.tasks[0].test[i][0] for i in range(4)])
    ctx.model.eval()
    ctx.model.moe_routing.image = 0
    with torch.no_grad():
        a, b = ctx.model.encode_image(images), ctx.model.encode_image(images)
    assert torch.equal(a, b)
    ctx.model.train()
    for layer in method._layers():
        layer.experts.eval()  # dropout off: only the gating noise differs
    with torch.no_grad():
        a, b = ctx.model.encode_image(images), ctx.model.encode_image(images)
    assert not torch.equal(a, b)


def test_ddas_routes_each_sample_to_the_task_it_came_from_and_rejects_the_unknown():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    feats = [c + 0.3 * torch.randn(200, 16, generator=g) for c in centres]
    cfg = SelectorConfig(iterations=300, reference_iterations=0, batch_size=32)
    selector = TaskSelector(cfg, 16)
    for t in range(2):
        selector.fit(feats[t], seed=t)
    chosen = selector.select(torch.cat([feats[0][:50], feats[1][:50]]))
    assert (chosen[:50] == 0).float().mean() > 0.95 and (chosen[50:] == 1).float().mean() > 0.95
    err = selector.errors(feats[2][:50]).min(dim=1).values
    seen = selector.errors(feats[0][:50]).min(dim=1).values
    assert err.mean() > seen.mean()
    threshold = float((err.median() + seen.max()) / 2) if err.median() > seen.max() else float(seen.max())
    strict = TaskSelector(cfg.model_copy(update={"threshold": threshold}), 16)
    strict.load(selector.state(), torch.device("cpu"))
    assert (strict.select(feats[0][:50]) == 0).all()
    assert (strict.select(feats[2][:50]) == -1).float().mean() >= 0.5
    per_batch = TaskSelector(cfg.model_copy(update={"per_batch": True}), 16)
    per_batch.load(selector.state(), torch.device("cpu"))
    mixed = per_batch.select(torch.cat([feats[0][:40], feats[1][:10]]))
    assert (mixed == 0).all()  # one decision for the whole batch


def test_selector_state_round_trips(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=2)
    method = build("mm_moe", **SMALL_MM)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    images = torch.stack([ctx.tasks[1].test[i][0] for i in range(6)])
    feats = method.routing.frozen_features(ctx.model, images, ctx)
    fresh = build("mm_moe", **SMALL_MM)
    fresh._model = ctx.model
    fresh.routing.load(method.routing.state(), torch.device("cpu"))
    assert torch.equal(fresh.routing.selector.select(feats), method.routing.selector.select(feats))
    assert len(method.routing.selector.tasks) == 3 and method.routing.selector.reference is not None


@pytest.mark.parametrize(
    "name,options,crash_at",
    [
        ("mm_moe", SMALL_MM, (1, 3)),  # mid-task 1: experts of two tasks exist
        ("mm_moe", SMALL_MM, (1, 5)),  # killed after task 2's last step
        ("mm_moe", SMALL_MM, (2, 5)),  # right after task 3's last step
        ("mm_moe", {**SMALL_MM, "router": "shared", "selector": None}, (2, 3)),
        ("moe_adapters", SMALL_MOE, (1, 3)),
        ("moe_adapters", {**SMALL_MOE, **CIL_CODE}, (2, 3)),
    ],
)
def test_a_killed_run_resumes_to_identical_weights(ctx_factory, tmp_path, name, options, crash_at):
    """Dropout and gating noise draw from torch's RNG: seeded per run as the recipe does."""
    torch.manual_seed(0)
    acc, weights, state = final_state(
        build(name, **options), ctx_factory(iterations=5), Checkpointer(tmp_path / "a")
    )
    torch.manual_seed(0)
    acc2, weights2, state2 = crash_then_resume(name, ctx_factory, tmp_path / "b", crash_at, **options)
    assert acc2 == acc
    assert same(weights2, weights)
    assert same(state2, state)


def test_the_task_adaptive_term_weighs_old_experts_gates_only_after_the_first_task(ctx_factory, tmp_path):
    """Eq. 4.11: λ Σ over earlier tasks' experts of their (pre-top-k) gate mass, in (0, λ)."""
    ctx = ctx_factory(iterations=2)
    method = build("mm_moe", **SMALL_MM)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    ctx.model.eval()
    batch = ctx.tasks[0].train.batch(list(range(6)))
    plain = build("mm_moe", **SMALL_MM, sparsity=0.0)
    plain._model, plain.groups = ctx.model, method.groups
    with torch.no_grad():
        for task, groups in ((0, 1), (2, 3)):
            ctx.task = task
            method.groups = plain.groups = groups  # as during that task: its router is the last one
            ctx_batch = (batch[0], batch[1] % ctx.tasks[task].n_classes)
            diff = float(method.loss(ctx_batch, ctx) - plain.loss(ctx_batch, ctx))
            if task == 0:
                assert diff == 0.0
            else:
                assert 0.0 < diff < 0.05


def test_moe_adapters_cil_configuration_trains_one_router_and_every_expert_each_step(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=3, class_incremental=True)
    method = build("moe_adapters", **{**SMALL_MOE, **CIL_CODE})
    shots = snapshots_after_each_task(method)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    layers = method._layers()
    assert all(len(layer.routers) == 1 and len(layer.experts) == 2 for layer in layers)
    assert method.frozen == [[] for _ in layers]
    up = [k for k in shots[0] if k.endswith("experts.experts.0.up.weight")]
    router = [k for k in shots[0] if k.endswith("routers.0.weight")]
    for earlier, later in zip(shots, shots[1:]):  # every step moves the shared router and the experts
        assert all(not torch.equal(earlier[k], later[k]) for k in router + up)
