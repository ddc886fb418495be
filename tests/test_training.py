"""Optimizer construction, ZSCL's warmup + cosine schedule, seeding, and one train step."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from madapt.errors import ConfigError, UnknownNameError
from madapt.training import build_optimizer, make_accelerator, seed_everything, warmup_cosine


def _zscl_cosine_lr(base_lr: float, warmup: int, steps: int, step: int) -> float:
    """ZSCL `src/models/utils.py::cosine_lr`, written out independently for comparison."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, steps - warmup
    return 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr


def _lrs(warmup: int, total: int, base: float = 1e-5, n: int | None = None) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = warmup_cosine(opt, warmup, total)
    opt.step()  # once, so torch does not warn about the order; the lr only depends on sched.step()
    out = []
    for _ in range(total if n is None else n):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return out


def test_schedule_matches_zscl_at_named_steps() -> None:
    lrs = _lrs(100, 1000)
    assert lrs[0] == pytest.approx(1e-7)  # (0 + 1) / 100 * 1e-5
    assert lrs[49] == pytest.approx(5e-6)  # half-way through warmup
    assert lrs[99] == pytest.approx(1e-5)  # warmup reaches the base lr
    assert lrs[100] == pytest.approx(1e-5)  # cosine starts at e = 0
    assert lrs[550] == pytest.approx(5e-6)  # e = es / 2
    assert lrs[999] == pytest.approx(0.5 * (1 + math.cos(math.pi * 899 / 900)) * 1e-5)
    for step in range(1000):
        assert lrs[step] == pytest.approx(_zscl_cosine_lr(1e-5, 100, 1000, step), rel=1e-12, abs=1e-20)


def test_schedule_is_monotone_in_each_phase_and_ends_at_zero() -> None:
    lrs = _lrs(10, 50, base=1.0, n=60)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:50], lrs[11:50]))
    assert lrs[50:] == [0.0] * 10  # past total_steps the lr stays 0 instead of rising again


def test_schedule_scales_every_param_group_by_its_own_base_lr() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [a], "lr": 1e-3}, {"params": [b]}], "adamw", lr=1e-5)
    sched = warmup_cosine(opt, 4, 8)
    for _ in range(2):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * 3 / 4, 1e-5 * 3 / 4])


def test_schedule_without_warmup_and_bad_arguments() -> None:
    assert _lrs(0, 4, base=1.0) == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for warmup, total in [(5, 4), (-1, 4), (0, 0)]:
        with pytest.raises(ValueError):
            warmup_cosine(opt, warmup, total)


def test_build_optimizer_adamw_defaults_and_frozen_params_dropped() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model.parameters(), lr=1e-5)
    assert isinstance(opt, torch.optim.AdamW)
    (group,) = opt.param_groups
    assert group["lr"] == 1e-5 and group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0.0
    ids = {id(p) for p in group["params"]}
    assert ids == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_build_optimizer_sgd_and_param_groups() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    opt = build_optimizer(
        [{"params": [a], "lr": 0.5, "weight_decay": 0.0}, {"params": [b, frozen]}, {"params": [frozen]}],
        "sgd",
        lr=0.1,
        weight_decay=1e-4,
        momentum=0.8,
    )
    assert isinstance(opt, torch.optim.SGD)
    assert len(opt.param_groups) == 2  # the all-frozen group is gone
    g0, g1 = opt.param_groups
    assert (g0["lr"], g0["weight_decay"], g0["momentum"]) == (0.5, 0.0, 0.8)
    assert (g1["lr"], g1["weight_decay"], g1["momentum"]) == (0.1, 1e-4, 0.8)
    assert [id(p) for p in g1["params"]] == [id(b)]


def test_build_optimizer_errors() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(UnknownNameError, match="did you mean 'adamw'"):
        build_optimizer([p], "adamww", lr=1.0)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1), requires_grad=False)], lr=1.0)


def test_seed_everything_reproduces_python_numpy_torch() -> None:
    def draw() -> tuple:
        layer = torch.nn.Linear(4, 2)
        return random.random(), float(np.random.rand()), torch.rand(3).tolist(), layer.weight.tolist()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


def test_make_accelerator_rejects_fp16() -> None:
    with pytest.raises(ConfigError, match="mixed_precision"):
        make_accelerator("fp16", cpu=True)


def test_loader_workers_never_exceed_the_usable_cpus(monkeypatch) -> None:
    import os

    from madapt.training import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert (loader_workers(4), loader_workers(2), loader_workers(1), loader_workers(0)) == (2, 2, 1, 0)
