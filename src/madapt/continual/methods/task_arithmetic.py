"""Task Arithmetic and TIES-merging as continual merging baselines for ConDU (seed 002).

Task Arithmetic (Ilharco et al. 2023):

Each task is fine-tuned from the pretrained θ⁰ exactly as ConDU tunes it (the `individual`
training), and its task vector δᵗ = θᵗ − θ⁰ is added to a running sum; every prediction, seen task
or not, uses the one merged model θ⁰ + λ · Σₜ δᵗ. Storage is the pretrained model plus one delta
(ConDU adds 1-bit masks and rescalers to the same delta to get per-task experts back). λ = 0.3 is
a common choice of the Task Arithmetic paper's validation sweeps (it selects λ per experiment on
held-out data; a continual learner has no future data to select on, so λ is fixed here).

TIES-merging (Yadav et al. 2023, ``ties_merging.py`` of the authors' code), after every task over
all task vectors so far: *trim* each δᵗ to its 20 % largest magnitudes over the whole vector
(``topk_values_mask``, K = 20), *elect* the sign of Σₜ trimmed δᵗ per entry (zeros take the sign
of the sum of elected signs, ``resolve_zero_signs('majority')``), *disjoint mean* of the trimmed
entries that agree with it, and predict with θ⁰ + λ · merged (λ = 1, the code's default; like
Task Arithmetic's it is fixed for want of future validation data). Each trimmed vector is written
once to the method's artifact folder (``trimmed_<task>.safetensors``, the storage TIES needs: one
sparse delta per task); checkpoints list which exist. A separate method rather than a ``merge:``
option of ConDU: the two share the per-task training (fine-tuning's), not ConDU's masks or
aggregation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from madapt.continual.method import MethodConfig
from madapt.continual.methods.finetune import Finetune
from madapt.registry import register
from madapt.runs import load_tensors, save_tensors


class TaskArithmeticConfig(MethodConfig):
    name: Literal["task_arithmetic"] = "task_arithmetic"
    scale: float = Field(0.3, gt=0, description="λ of θ⁰ + λ Σ δ (fixed: no future data to tune it on)")


@register("method", "task_arithmetic")
class TaskArithmetic(Finetune):
    """Fine-tuning's parameters and loss; every task from θ⁰, the merge after it."""

    Config = TaskArithmeticConfig

    def __init__(self, cfg: TaskArithmeticConfig) -> None:
        super().__init__(cfg)
        self.total: dict[str, torch.Tensor] = {}  # Σ δᵗ over the tasks so far

    def before_task(self, ctx) -> None:
        ctx.model.load_state_dict(ctx.pretrained)  # every task from θ⁰, as ConDU

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        for name, p in ctx.model.named_parameters():
            if p.requires_grad:
                delta = p.detach() - ctx.pretrained[name]
                self.total[name] = self.total[name] + delta if name in self.total else delta.clone()
        for name, p in ctx.model.named_parameters():  # the model is the merge from here on
            if name in self.total:
                p.copy_(ctx.pretrained[name] + self.cfg.scale * self.total[name])

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = {k: v.clone() for k, v in state.get("total", {}).items()}


class TiesConfig(MethodConfig):
    name: Literal["ties"] = "ties"
    density: float = Field(0.2, gt=0, le=1, description="fraction of each task vector kept (TIES: top 20 %)")
    scale: float = Field(1.0, gt=0, description="λ of θ⁰ + λ · merged (the TIES code's default)")


def trim(delta: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Keep the ``density`` largest magnitudes of the whole task vector as the TIES code counts them:
    |x| >= the (d - int(d · density))-th smallest magnitude, so int(d · density) + 1 distinct values."""
    flat = torch.cat([v.reshape(-1).abs() for v in delta.values()])
    k = flat.numel() - int(flat.numel() * density)
    threshold = flat.kthvalue(max(k, 1)).values if k > 0 else flat.new_tensor(-1.0)
    return {n: torch.where(v.abs() >= threshold, v, torch.zeros_like(v)) for n, v in delta.items()}


def ties_merge(trimmed: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Elect signs from the summed trimmed vectors, then the mean of the agreeing non-zero entries."""
    sums = {n: sum(t[n] for t in trimmed) for n in trimmed[0]}
    signs = {n: torch.sign(v) for n, v in sums.items()}
    majority = torch.sign(sum(s.sum() for s in signs.values()))
    merged = {}
    for n, sign in signs.items():
        sign = torch.where(sign == 0, majority, sign)
        kept = [torch.where(sign > 0, t[n] > 0, t[n] < 0) * t[n] for t in trimmed]
        count = sum((k != 0).float() for k in kept)
        merged[n] = sum(kept) / count.clamp(min=1)
    return merged


@register("method", "ties")
class Ties(TaskArithmetic):
    """Task Arithmetic's training; after each task the TIES merge of every trimmed task vector."""

    Config = TiesConfig

    def __init__(self, cfg: TiesConfig) -> None:
        super().__init__(cfg)
        self.stored: list[int] = []
        self._folder: Path | None = None

    def setup(self, ctx) -> None:
        if ctx.artifacts is None:
            raise ValueError("TIES keeps its trimmed task vectors as files: ctx.artifacts must be set")
        self._folder = ctx.artifacts

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        delta = {
            n: p.detach() - ctx.pretrained[n] for n, p in ctx.model.named_parameters() if p.requires_grad
        }
        save_tensors(self._folder / f"trimmed_{ctx.task}.safetensors", trim(delta, self.cfg.density))
        self.stored = sorted({*self.stored, ctx.task})
        merged = ties_merge([load_tensors(self._folder / f"trimmed_{t}.safetensors") for t in self.stored])
        for name, p in ctx.model.named_parameters():
            if name in merged:
                p.copy_(ctx.pretrained[name] + self.cfg.scale * merged[name].to(p))

    def state_dict(self) -> dict[str, Any]:
        return {"stored": self.stored}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stored = [int(t) for t in state.get("stored", [])]
