"""WiSE-FT as a continual baseline, as ZSCL's ``scripts/WiSE_finetune.sh`` runs it (seed 000 Table 3.2).

``--method finetune --wise_merge --wise_ft_model n --wise_ft_alpha 0.8``: fine-tune the task, then
interpolate with the weights the task started from (the loaded previous checkpoint, ``model_fix``):
theta <- 0.8 * theta_finetuned + 0.2 * theta_start, every parameter.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from madapt.continual.losses import assign, snapshot
from madapt.continual.method import MethodConfig
from madapt.continual.methods.finetune import Finetune
from madapt.registry import register


class WiseFTConfig(MethodConfig):
    name: Literal["wise_ft"] = "wise_ft"
    alpha: float = Field(
        0.8, ge=0.0, le=1.0, description="weight of the fine-tuned model (ZSCL --wise_ft_alpha 0.8)"
    )


@register("method", "wise_ft")
class WiseFT(Finetune):
    Config = WiseFTConfig

    def __init__(self, cfg: WiseFTConfig) -> None:
        super().__init__(cfg)
        self.start: dict[str, torch.Tensor] = {}

    def before_task(self, ctx) -> None:
        self.start = snapshot(ctx.model)

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        tuned = snapshot(ctx.model)
        alpha = self.cfg.alpha
        assign(ctx.model, {n: alpha * tuned[n] + (1 - alpha) * self.start[n] for n in tuned})
        self.start = {}

    def state_dict(self) -> dict[str, Any]:
        return {}
