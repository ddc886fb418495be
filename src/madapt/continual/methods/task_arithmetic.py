"""Task Arithmetic as a continual merging baseline for ConDU (seed 002; Ilharco et al. 2023).

Each task is fine-tuned from the pretrained θ⁰ exactly as ConDU tunes it (the `individual`
training), and its task vector δᵗ = θᵗ − θ⁰ is added to a running sum; every prediction, seen task
or not, uses the one merged model θ⁰ + λ · Σₜ δᵗ. Storage is the pretrained model plus one delta
(ConDU adds 1-bit masks and rescalers to the same delta to get per-task experts back). λ = 0.3 is
a common choice of the Task Arithmetic paper's validation sweeps (it selects λ per experiment on
held-out data; a continual learner has no future data to select on, so λ is fixed here).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from madapt.continual.method import MethodConfig
from madapt.continual.methods.finetune import Finetune
from madapt.registry import register


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
