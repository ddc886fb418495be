"""WiSE-FT as a continual baseline (seed 000 Table 3.2; Wortsman et al. 2022).

After fine-tuning on a task, the weights are interpolated with those the task started from:
theta <- alpha * theta_finetuned + (1 - alpha) * theta_start (alpha = 0.5 as in ZSCL's baseline).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from madapt.config import Strict
from madapt.continual.losses import assign, snapshot
from madapt.continual.methods.finetune import Finetune
from madapt.registry import register


class WiseFTConfig(Strict):
    name: Literal["wise_ft"] = "wise_ft"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the fine-tuned model in the interpolation")


@register("method", "wise_ft")
class WiseFT(Finetune):
    Config = WiseFTConfig

    def __init__(self, alpha: float = 0.5, **_: Any) -> None:
        self.alpha = alpha
        self.start: dict[str, torch.Tensor] = {}

    def before_task(self, ctx) -> None:
        self.start = snapshot(ctx.model)

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        tuned = snapshot(ctx.model)
        assign(ctx.model, {n: self.alpha * tuned[n] + (1 - self.alpha) * self.start[n] for n in tuned})

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start = dict(state.get("start", {}))
