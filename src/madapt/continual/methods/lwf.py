"""LwF and LwF-VR for CLIP (seed 000 Table 3.2 baselines; Li & Hoiem 2017; Ding et al. 2022).

LwF: besides the task loss, the student keeps the logits the task-start model (teacher) gives the
current images over the classes of all earlier tasks (first-template texts, each model with its own
text encoder), with ZSCL's distillation at temperature T.
LwF-VR replaces those old-class texts by a fresh random draw of words from a vocabulary every step
(vocabulary replacement), so the distilled text space is not limited to the classes seen so far.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from madapt.config import Strict
from madapt.continual.losses import all_but_logit_scale, distillation, frozen_copy
from madapt.continual.methods.finetune import ce_loss
from madapt.backbones.clip import fill_template
from madapt.registry import register


class LwFConfig(Strict):
    name: Literal["lwf", "lwf_vr"] = "lwf"
    weight: float = Field(1.0, ge=0.0, description="weight of the distillation term")
    temperature: float = Field(2.0, gt=0.0, description="distillation temperature (ZSCL: 2)")
    vocabulary_size: int = Field(64, ge=1, description="LwF-VR: random words drawn per step")


@register("method", "lwf")
class LwF:
    Config = LwFConfig

    def __init__(self, weight: float = 1.0, temperature: float = 2.0, vocabulary_size: int = 64, **_: Any) -> None:
        self.weight, self.temperature, self.vocabulary_size = weight, temperature, vocabulary_size
        self.teacher: torch.nn.Module | None = None

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return all_but_logit_scale(model)

    def before_task(self, ctx) -> None:
        self.teacher = frozen_copy(ctx.model) if ctx.task > 0 else None

    def distill_tokens(self, ctx) -> torch.Tensor:
        """Texts whose logits are preserved: every earlier class with its first template."""
        return torch.cat([ctx.class_tokens(t, ensemble=False) for t in range(ctx.task)])

    def loss(self, batch, ctx) -> torch.Tensor:
        loss = ce_loss(batch, ctx)
        if self.teacher is None or self.weight == 0:
            return loss
        images = batch[0]
        tokens = self.distill_tokens(ctx)
        scale = ctx.settings.logit_scale
        with torch.no_grad():
            t_img = F.normalize(self.teacher.encode_image(images).float(), dim=-1)
            t_txt = F.normalize(self.teacher.encode_text(tokens).float(), dim=-1)
        s_img = F.normalize(ctx.model.encode_image(images).float(), dim=-1)
        s_txt = F.normalize(ctx.model.encode_text(tokens).float(), dim=-1)
        return loss + self.weight * distillation(scale * t_img @ t_txt.T, scale * s_img @ s_txt.T, self.temperature)

    def after_task(self, ctx) -> None:
        self.teacher = None

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        return ctx.clip_logits(ctx.model, images, task)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict() if self.teacher is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.teacher is not None and state.get("teacher"):
            self.teacher.load_state_dict(state["teacher"])


@register("method", "lwf_vr")
class LwFVR(LwF):
    """LwF with vocabulary replacement: random words instead of the old classes' names."""

    def before_task(self, ctx) -> None:
        self.teacher = frozen_copy(ctx.model)  # also on task 1: the text space of pretraining is kept
        words = sorted({w for task in ctx.tasks for name in task.classnames for w in name.split()}
                       | set(getattr(ctx.reference, "vocabulary", [])))
        self.vocabulary = words

    def distill_tokens(self, ctx) -> torch.Tensor:
        # a pure function of (seed, task, step): resumed runs draw the same words
        rng = np.random.default_rng([ctx.settings.seed, ctx.task, ctx.step])
        k = min(self.vocabulary_size, len(self.vocabulary))
        picks = rng.choice(len(self.vocabulary), size=k, replace=False)
        template = ctx.current.templates[0]
        return ctx.backbone.tokenize([fill_template(template, self.vocabulary[i]) for i in picks]).to(ctx.device)
