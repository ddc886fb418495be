"""ConDU (seed 002): the fusion algebra against element loops, and the method through the engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cl_helpers import build
from test_engine import crash_then_resume, final_state, same

from madapt.continual import fusion
from madapt.continual.engine import run_sequence
from madapt.runs import Checkpointer


def random_deltas(t: int, seed: int = 0, shapes=((4, 5), (7,), ())) -> list[dict[str, torch.Tensor]]:
    """Small integers so that zeros, exact ties and zero sums all occur."""
    g = torch.Generator().manual_seed(seed)
    return [
        {f"p{i}": torch.randint(-2, 3, s, generator=g).float() for i, s in enumerate(shapes)}
        for _ in range(t)
    ]


def loop_unify(deltas, rescale):
    """Seed 002 §4.1 one element at a time (a zero sum elects -1, as ConDU's code)."""
    unified, masks = {}, [{} for _ in deltas]
    num, den = [0.0] * len(deltas), [0.0] * len(deltas)
    for name in deltas[0]:
        flats = [d[name].reshape(-1).tolist() for d in deltas]
        u, ms = [], [[] for _ in deltas]
        for j in range(len(flats[0])):
            vals = [f[j] for f in flats]
            sign = 1.0 if sum(vals) > 0 else -1.0
            agree = [v * sign > 0 for v in vals]
            best = max([abs(v) for v, a in zip(vals, agree) if a], default=0.0) * sign
            u.append(best)
            for i, a in enumerate(agree):
                ms[i].append(a)
        n = max(len(u), 1)
        for i in range(len(deltas)):
            a = sum(abs(v) for v in flats[i])
            b = sum(abs(x) for x, m in zip(u, ms[i]) if m)
            num[i] += a / n if rescale == "tensor_mean" else a
            den[i] += b / n if rescale == "tensor_mean" else b
        shape = deltas[0][name].shape
        unified[name] = torch.tensor(u).reshape(shape)
        for i in range(len(deltas)):
            masks[i][name] = torch.tensor(ms[i]).reshape(shape)
    rescalers = [1.0 if rescale == "none" or d == 0 else a / d for a, d in zip(num, den)]
    return unified, masks, rescalers


@pytest.mark.parametrize("rescale", ["tensor_mean", "global", "none"])
@pytest.mark.parametrize("t", [1, 2, 5])
def test_unify_equals_the_element_loop_with_zeros_and_ties(rescale, t):
    deltas = random_deltas(t, seed=t)
    unified, packed, rescalers = fusion.unify(deltas, rescale)
    u_ref, m_ref, r_ref = loop_unify(deltas, rescale)
    for name in u_ref:
        assert torch.equal(unified[name], u_ref[name])
        for i in range(t):
            assert torch.equal(fusion.unpack_mask(packed[i][name], u_ref[name].shape), m_ref[i][name])
    torch.testing.assert_close(rescalers, torch.tensor(r_ref, dtype=torch.float64))
    # the two rescaler formulas really differ on tensors of different sizes
    if rescale != "none" and t > 1:
        other = "global" if rescale == "tensor_mean" else "tensor_mean"
        assert not torch.allclose(rescalers, fusion.unify(deltas, other)[2])


def test_zero_sums_elect_the_negative_sign_and_all_zero_entries_stay_out_of_every_mask():
    deltas = [{"w": torch.tensor([1.0, 0.0, -3.0, 2.0])}, {"w": torch.tensor([-1.0, 0.0, 1.0, 2.0])}]
    unified, packed, _ = fusion.unify(deltas)
    assert unified["w"].tolist() == [-1.0, 0.0, -3.0, 2.0]
    masks = [fusion.unpack_mask(p["w"], (4,)).tolist() for p in packed]
    assert masks == [[False, False, True, True], [True, False, False, True]]


def test_a_delta_agreeing_with_the_unified_one_comes_back_exactly_up_to_its_rescaler():
    delta = random_deltas(1, seed=3)[0]
    half = {k: 0.5 * v for k, v in delta.items()}
    for rescale in ["tensor_mean", "global"]:
        unified, packed, rescalers = fusion.unify([delta, half], rescale)
        assert same(unified, delta)
        assert rescalers.tolist() == [1.0, 0.5]
        assert same(fusion.decouple(unified, packed[1], rescalers[1]), half)


@pytest.mark.parametrize("rescale", ["tensor_mean", "global"])
def test_decoupling_the_only_task_returns_its_delta_exactly(rescale):
    delta = {k: torch.randn_like(v) for k, v in random_deltas(1)[0].items()}
    unified, packed, rescalers = fusion.remerge({}, [], torch.zeros(0), delta, rescale)
    assert rescalers.tolist() == [1.0]
    assert same(fusion.decouple(unified, packed[0], rescalers[0]), delta)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001])
def test_packed_masks_round_trip_at_one_bit_per_element(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
    packed = fusion.pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(fusion.unpack_mask(packed, (n,)), mask)
    assert torch.equal(fusion.unpack_mask(fusion.pack_mask(mask.view(1, -1)), (1, n)), mask.view(1, -1))


def test_remerge_is_unify_over_the_decoupled_old_tasks_and_the_new_one(monkeypatch):
    d = [
        {k: torch.randn_like(v) for k, v in x.items()}
        for x in random_deltas(4, seed=1, shapes=((9, 5), (11,)))
    ]
    unified, packed, rescalers = fusion.unify(d[:3])
    decoupled = [fusion.decouple(unified, packed[i], rescalers[i]) for i in range(3)]
    expected = fusion.unify([*decoupled, d[3]])

    def copy(u):
        return {k: v.clone() for k, v in u.items()}

    got = fusion.remerge(copy(unified), packed, rescalers, d[3])  # updates the unified tensors in place
    assert same(got[0], expected[0]) and same(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2])
    # streaming in slices of 8 elements changes nothing
    monkeypatch.setattr(fusion, "CHUNK", 8)
    sliced = fusion.remerge(copy(unified), packed, rescalers, d[3])
    assert same(sliced[0], expected[0]) and same(sliced[1], expected[1])
    torch.testing.assert_close(sliced[2], expected[2])


def test_the_iterated_loop_is_not_a_one_shot_merge_of_the_original_deltas():
    """Figure 2: old tasks enter each merge as their decoupled approximations."""
    d = [{k: torch.randn_like(v) for k, v in x.items()} for x in random_deltas(3, seed=2, shapes=((30,),))]
    state = ({}, [], torch.zeros(0))
    for delta in d:
        state = fusion.remerge(*state, delta)
    assert not same(state[0], fusion.unify(d)[0])


# --- the method -------------------------------------------------------------------------------


def condu(**options):
    return build("condu", **options)


def trained_params(ctx):
    return [n for n, p in ctx.model.named_parameters() if n != "logit_scale"]


def test_every_task_starts_from_theta0_and_the_first_expert_is_the_trained_model(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=3)
    method = condu()
    starts = []
    original = method.before_task

    def record(c):
        original(c)
        starts.append({k: v.clone() for k, v in c.model.state_dict().items()})

    method.before_task = record
    ctx.tasks = ctx.tasks[:1]
    run_sequence(method, ctx, Checkpointer(tmp_path))
    assert same(starts[0], ctx.pretrained)
    expert = dict(method.expert(0, ctx).named_parameters())
    for name, p in ctx.model.named_parameters():
        # the delta comes back exactly (test above); θ⁰ + (θ - θ⁰) equals θ up to one rounding
        torch.testing.assert_close(expert[name], p, rtol=0, atol=1e-7)
    assert method.rescalers.tolist() == [1.0]


def test_a_run_keeps_one_unified_delta_and_one_packed_mask_per_task(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=3)
    method = condu()
    acc = run_sequence(method, ctx, Checkpointer(tmp_path))
    names = trained_params(ctx)
    assert set(method.unified) == set(names)
    assert len(method.masks) == 3 and all(set(m) == set(names) for m in method.masks)
    n_params = sum(ctx.pretrained[n].numel() for n in names)
    assert fusion.mask_bytes(method.masks) <= 3 * (n_params / 8 + len(names))
    assert [p.shape[0] for p in method.prototypes] == [t.n_classes for t in ctx.tasks]
    assert len(acc) == 3 and all(v is not None for row in acc for v in row)
    summary = method.summary(ctx)
    items = {r["item"]: r["MB"] for r in summary["storage"]}
    assert items["individual experts (3 tasks)"] == pytest.approx(3 * items["pretrained model"], rel=1e-2)
    assert len(summary["merge_seconds"]) == 3


def test_prototypes_follow_the_reference_code(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=2)
    ctx.tasks = ctx.tasks[:1]
    method = condu()
    run_sequence(method, ctx, Checkpointer(tmp_path))
    model = method._pretrained_model(ctx)
    task = ctx.tasks[0]
    with torch.no_grad():
        images = torch.stack([task.train[i][0] for i in range(len(task.train))])
        labels = torch.stack([task.train[i][1] for i in range(len(task.train))])
        feats = F.normalize(model.encode_image(images), dim=-1)
        texts = F.normalize(model.encode_text(ctx.class_tokens(0, ensemble=True)), dim=-1)
        texts = texts.view(task.n_classes, -1, texts.shape[-1]).mean(dim=1)
    expected = torch.stack(
        [F.normalize((feats[labels == c].mean(0) + texts[c]) / 2, dim=0) for c in range(3)]
    )
    torch.testing.assert_close(method.prototypes[0], expected, atol=1e-5, rtol=1e-5)


def test_aggregation_over_all_tasks_is_the_mean_of_every_expert_and_the_pretrained_model(
    ctx_factory, tmp_path
):
    ctx = ctx_factory(iterations=2)
    method = condu(top_k=3)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    images = torch.stack([ctx.tasks[2].test[i][0] for i in range(6)])
    ctx.task_id_known = False
    with torch.no_grad():
        got = method.logits(images, 2, ctx)
        parts = [ctx.clip_logits(method._pretrained_model(ctx), images, 2)]
        parts += [ctx.clip_logits(method.expert(t, ctx), images, 2) for t in range(3)]
    torch.testing.assert_close(got, torch.stack(parts).mean(0))
    # without the pretrained model and K = 1 each image takes its best-matching task's expert only
    method.cfg = method.cfg.model_copy(update={"top_k": 1, "include_pretrained": False})
    with torch.no_grad():
        got = method.logits(images, 2, ctx)
        feats = F.normalize(method._pretrained_model(ctx).encode_image(images), dim=-1)
        best = torch.stack([(feats @ p.T).amax(1) for p in method.prototypes], 1).argmax(1)
    for i, t in enumerate(best.tolist()):
        torch.testing.assert_close(got[i], parts[1 + t][i])


def test_a_seen_task_with_its_id_uses_its_own_decoupled_expert(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=2)
    method = condu()
    run_sequence(method, ctx, Checkpointer(tmp_path))
    images = torch.stack([ctx.tasks[1].test[i][0] for i in range(4)])
    with torch.no_grad():
        got = method.logits(images, 1, ctx)
        torch.testing.assert_close(got, ctx.clip_logits(method.expert(1, ctx), images, 1))
        expert = dict(method.expert(1, ctx).named_parameters())
        for name, u in method.unified.items():
            delta = fusion.decoupled_tensor(u, method.masks[1][name], method.rescalers[1])
            torch.testing.assert_close(expert[name], ctx.pretrained[name] + delta)


def comparable(state):
    return {k: v for k, v in state.items() if k != "merge_seconds"}  # wall-clock times differ


@pytest.mark.parametrize("crash_at", [(0, 3), (1, 5), (2, 1)])
def test_resume_after_a_crash_reaches_the_same_unified_delta_triggers_and_prototypes(
    ctx_factory, tmp_path, crash_at
):
    """(1, 5): after task 1's last step, before its merge; (2, 1): between tasks, merge stored."""
    acc, weights, state = final_state(condu(), ctx_factory(iterations=5), Checkpointer(tmp_path / "a"))
    acc2, weights2, state2 = crash_then_resume("condu", ctx_factory, tmp_path / "b", crash_at)
    assert acc2 == acc
    assert same(weights2, weights)
    assert same(comparable(state2), comparable(state))
    assert len(state2["merge_seconds"]) == 3


def test_the_resume_check_fails_when_the_stored_merge_is_dropped(ctx_factory, tmp_path, monkeypatch):
    """Negative control: a method that forgets its triggers on resume does not reach the same state."""
    _, _, state = final_state(condu(), ctx_factory(iterations=5), Checkpointer(tmp_path / "a"))
    from madapt.continual.methods.condu import ConDU

    monkeypatch.setattr(ConDU, "load_state_dict", lambda self, s: None)
    _, _, state2 = crash_then_resume("condu", ctx_factory, tmp_path / "b", (2, 1))
    assert not same(comparable(state2), comparable(state))


# --- ConDU (LoRA) -------------------------------------------------------------------------------


def test_lora_layers_add_x_a_b_over_sqrt_r_and_keep_the_base_names(tiny_clip):
    import copy

    from madapt.peft.lora import LoraConfig, LoRALinear, inject_lora

    model = copy.deepcopy(tiny_clip.model)
    before = set(model.state_dict())
    names = inject_lora(model, LoraConfig(rank=4), seed=0)
    blocks = len(model.visual.transformer.resblocks) + len(model.transformer.resblocks)
    assert len(names) == 2 * blocks  # c_fc and c_proj of every block of both towers
    after = set(model.state_dict())
    assert before <= after and all(k.endswith(("lora_A", "lora_B")) for k in after - before)
    layer = model.get_submodule(names[0])
    assert isinstance(layer, LoRALinear)
    x = torch.randn(3, layer.in_features)
    expected = F.linear(x, layer.weight, layer.bias) + (x @ layer.lora_A @ layer.lora_B) / 2.0
    torch.testing.assert_close(layer(x), expected)
    # the same seed gives the same initial LoRA (a resumed run rebuilds the same θ⁰)
    again = copy.deepcopy(tiny_clip.model)
    inject_lora(again, LoraConfig(rank=4), seed=0)
    assert same(dict(again.state_dict()), dict(model.state_dict()))


def test_condu_lora_trains_and_merges_only_the_lora_tensors(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=3)
    method = condu(lora={"rank": 4})
    run_sequence(method, ctx, Checkpointer(tmp_path))
    assert method.unified and all(k.endswith(("lora_A", "lora_B")) for k in method.unified)
    for name, value in ctx.model.state_dict().items():
        if not name.endswith(("lora_A", "lora_B")):
            assert torch.equal(value, ctx.pretrained[name]), name  # the base CLIP never moves
    assert any(not torch.equal(ctx.model.state_dict()[k], ctx.pretrained[k]) for k in method.unified)
    rows = {r["item"]: r["bytes"] for r in method.summary(ctx)["storage"]}
    lora_bytes = rows["unified delta"]
    assert rows["individual experts (3 tasks)"] == rows["pretrained model"] + 3 * lora_bytes


def test_condu_lora_resumes_to_the_same_state(ctx_factory, tmp_path):
    options = {"lora": {"rank": 4}}
    acc, weights, state = final_state(
        condu(**options), ctx_factory(iterations=5), Checkpointer(tmp_path / "a")
    )
    acc2, weights2, state2 = crash_then_resume("condu", ctx_factory, tmp_path / "b", (1, 3), **options)
    assert acc2 == acc and same(weights2, weights) and same(comparable(state2), comparable(state))


def test_a_merge_only_ever_stacks_one_slice_of_each_tensor(monkeypatch):
    """The memory bound of `remerge`: the t + 1 decoupled rows exist for one CHUNK-sized slice at a
    time, never for a whole tensor (a ViT-B/16 token embedding is 25 M values)."""
    monkeypatch.setattr(fusion, "CHUNK", 16)
    d = [{"w": torch.randn(10, 10), "b": torch.randn(37)} for _ in range(3)]
    state = fusion.unify(d[:2])
    widths = []
    real_stack = torch.stack

    def stack(tensors, *args, **kwargs):
        widths.append(max(t.numel() for t in tensors))
        return real_stack(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "stack", stack)
    fusion.remerge({k: v.clone() for k, v in state[0].items()}, state[1], state[2], d[2])
    assert widths and max(widths) <= 16


def test_the_k_sweep_reproduces_the_engines_unseen_task_accuracy_at_the_run_k(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=2)
    method = condu(top_k=2, k_sweep=[1, 2])
    acc = run_sequence(method, ctx, Checkpointer(tmp_path))
    for i in range(3):
        for j in range(i + 1, 3):
            assert method.sweep["2"][i][j] == pytest.approx(acc[i][j])
    table = {r["K"]: r["Transfer"] for r in method.summary(ctx)["k_sweep"]}
    transfer = ((acc[0][1]) + (acc[0][2] + acc[1][2]) / 2) / 2
    assert table[2] == pytest.approx(transfer, abs=0.01)
    assert set(table) == {1, 2}


# --- Task Arithmetic (the merging baseline) -----------------------------------------------------


def test_task_arithmetic_predicts_with_theta0_plus_scaled_sum_of_task_vectors(ctx_factory, tmp_path):
    from madapt.continual.methods.task_arithmetic import TaskArithmetic

    ctx = ctx_factory(iterations=2)
    method = build("task_arithmetic", scale=0.5)
    trained = []
    original = TaskArithmetic.after_task

    def record(self, c):
        trained.append({n: p.detach().clone() for n, p in c.model.named_parameters()})
        original(self, c)

    method.after_task = record.__get__(method)
    run_sequence(method, ctx, Checkpointer(tmp_path))
    for name, p in ctx.model.named_parameters():
        if name == "logit_scale":
            assert torch.equal(p, ctx.pretrained[name])
            continue
        total = sum(t[name] - ctx.pretrained[name] for t in trained)
        torch.testing.assert_close(p, ctx.pretrained[name] + 0.5 * total)


def test_task_arithmetic_resumes_to_the_same_merge(ctx_factory, tmp_path):
    acc, weights, state = final_state(
        build("task_arithmetic"), ctx_factory(iterations=5), Checkpointer(tmp_path / "a")
    )
    acc2, weights2, state2 = crash_then_resume("task_arithmetic", ctx_factory, tmp_path / "b", (2, 3))
    assert acc2 == acc and same(weights2, weights) and same(state2, state)
