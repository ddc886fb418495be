"""Small pieces shared by the continual methods (one definition each)."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F


def distillation(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """CE(student/T, softmax(teacher/T)) * T^2, ZSCL's ``distillation`` (seed 000 §3.2 baselines)."""
    t = temperature
    target = F.softmax(teacher_logits.detach() / t, dim=-1)
    return -(target * F.log_softmax(student_logits / t, dim=-1)).sum(dim=-1).mean() * t * t


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy with gradients off, in eval mode (teachers)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def all_but_logit_scale(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """ZSCL's ``--train-mode whole``: every CLIP parameter except the temperature."""
    params = []
    for name, p in model.named_parameters():
        train = name != "logit_scale" and not name.endswith(".logit_scale") and name != "logit_bias"
        p.requires_grad_(train)
        if train:
            params.append(p)
    return params


def snapshot(model: torch.nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of (some of) the model's parameters."""
    wanted = set(names) if names is not None else None
    return {n: p.detach().clone() for n, p in model.named_parameters() if wanted is None or n in wanted}


@torch.no_grad()
def assign(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into the model's parameters of the same names."""
    params = dict(model.named_parameters())
    for name, value in values.items():
        params[name].copy_(value)
