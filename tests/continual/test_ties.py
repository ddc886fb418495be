"""TIES-merging (Yadav et al. 2023) as a continual merging baseline: trim, elect, disjoint mean."""

from __future__ import annotations

import pytest
import torch
from cl_helpers import build
from test_engine import crash_then_resume, final_state, same

from madapt.continual.methods.task_arithmetic import ties_merge, trim
from madapt.runs import Checkpointer


def vectors(t: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"a": torch.randint(-3, 4, (5, 4), generator=g).float(), "b": torch.randn(7, generator=g)}
        for _ in range(t)
    ]


def test_trim_keeps_the_largest_fifth_of_the_whole_vector_as_the_ties_code_counts():
    """``topk_values_mask``: keep |x| >= the (d - int(d K))-th smallest, i.e. int(d K) + 1 values."""
    delta = {"a": torch.arange(1.0, 21.0).reshape(4, 5), "b": -torch.arange(21.0, 31.0)}  # 30 magnitudes
    kept = trim(delta, 0.2)
    flat = torch.cat([kept["a"].reshape(-1), kept["b"]])
    assert sorted(flat[flat != 0].abs().tolist()) == [24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 30.0]
    assert torch.equal(kept["b"][-7:], delta["b"][-7:]) and not kept["a"].any()


@pytest.mark.parametrize("t", [1, 2, 4])
def test_ties_merge_equals_the_element_loop(t):
    trimmed = vectors(t, seed=t)
    merged = ties_merge(trimmed)
    signs = {n: torch.sign(sum(v[n] for v in trimmed)) for n in trimmed[0]}
    majority = 1.0 if sum(float(s.sum()) for s in signs.values()) > 0 else -1.0
    for n in trimmed[0]:
        for i in range(trimmed[0][n].numel()):
            vals = [float(v[n].reshape(-1)[i]) for v in trimmed]
            s = float(signs[n].reshape(-1)[i]) or majority
            agree = [x for x in vals if x * s > 0]
            expected = sum(agree) / len(agree) if agree else 0.0
            assert float(merged[n].reshape(-1)[i]) == pytest.approx(expected, abs=1e-6)


def test_ties_predicts_with_the_merge_of_every_trimmed_task_vector(ctx_factory, tmp_path):
    ctx = ctx_factory(iterations=3)
    method = build("ties")
    acc, weights, _ = final_state(method, ctx, Checkpointer(tmp_path))
    files = sorted(p.name for p in (tmp_path / "artifacts").glob("trimmed_*.safetensors"))
    assert files == ["trimmed_0.safetensors", "trimmed_1.safetensors", "trimmed_2.safetensors"]
    from madapt.runs import load_tensors

    merged = ties_merge([load_tensors(tmp_path / "artifacts" / f) for f in files])
    for name in merged:
        torch.testing.assert_close(weights[name], ctx.pretrained[name] + merged[name])
    assert not torch.equal(weights["visual.conv1.weight"], ctx.pretrained["visual.conv1.weight"])
    assert torch.equal(weights["logit_scale"], ctx.pretrained["logit_scale"])


def test_ties_resumes_to_the_same_merge(ctx_factory, tmp_path):
    acc, weights, state = final_state(build("ties"), ctx_factory(iterations=5), Checkpointer(tmp_path / "a"))
    acc2, weights2, state2 = crash_then_resume("ties", ctx_factory, tmp_path / "b", (1, 5))
    assert acc2 == acc and same(weights2, weights) and same(state2, state)
