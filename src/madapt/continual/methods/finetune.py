"""Continual fine-tuning and individual fine-tuning (seed 000 Table 3.2 baselines).

Continual FT trains all CLIP weights (but the temperature) task after task with ZSCL's loss:
cross-entropy with label smoothing over the current task's classes, texts from the first template
through the trainable text encoder. Individual FT (``from_pretrained: true``) restarts every task
from the pretrained weights: the per-task upper bound, and the starting point of ConDU (seed 002).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from madapt.config import Strict
from madapt.continual.losses import all_but_logit_scale
from madapt.registry import register


class FinetuneConfig(Strict):
    name: Literal["finetune", "individual"] = "finetune"


def ce_loss(batch: tuple[torch.Tensor, torch.Tensor], ctx) -> torch.Tensor:
    """ZSCL's task loss: CE with label smoothing on scale * <img, first-template class text>."""
    images, labels = batch
    logits = ctx.train_logits(ctx.model, images)
    return F.cross_entropy(logits, labels, label_smoothing=ctx.settings.label_smoothing)


class Finetune:
    Config = FinetuneConfig
    from_pretrained = False

    def __init__(self, **_: Any) -> None:
        pass

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return all_but_logit_scale(model)

    def before_task(self, ctx) -> None:
        if self.from_pretrained:
            ctx.model.load_state_dict(ctx.pretrained)

    def loss(self, batch, ctx) -> torch.Tensor:
        return ce_loss(batch, ctx)

    def after_task(self, ctx) -> None:
        pass

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        return ctx.clip_logits(ctx.model, images, task)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


register("method", "finetune")(Finetune)


@register("method", "individual")
class Individual(Finetune):
    """Each task fine-tuned alone from the pretrained weights (upper bound per dataset)."""

    from_pretrained = True
