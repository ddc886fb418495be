"""ZSCL as its code does it (seed 000 Table 3.2 baseline; Zheng et al. 2023; ``scripts/ZSCL.sh``).

``--method ZSCL --image_loss --text_loss --we --avg_freq 100 --l2 1 --ref-dataset ImageNet
--ref-sentences conceptual_captions``. Each step adds, to the task loss:

- distillation at T=2 between the frozen *pretrained* teacher and the student on a batch of reference
  images (ZSCL: ImageNet train, evaluation transforms, its own shuffled stream) against the
  teacher's embeddings of all reference captions, both ways (image->text logits and their
  transpose), weights 1 and 1; the student's text encoder is not in this term;
- the *sum* of squared differences to the task-start weights (``l2``);
- a weight ensemble as ZSCL's loop does it: the average starts as the task-start weights (n = 1);
  after the optimizer step of every iteration i with i % ``average_every`` == 0 (iteration 0
  included) it absorbs the current weights, we = (we * n + theta) / (n + 1); the final weights are
  absorbed too (ZSCL runs iterations 0..1000, so its last one is an averaging point); the averaged
  model replaces theta at the end of the task.

Teacher caption embeddings are computed once per task (the teacher is frozen, so they never change,
while ZSCL re-encodes every caption at every step: same values, a text forward saved per step).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from madapt.continual.losses import all_but_logit_scale, assign, distillation, frozen_copy, snapshot
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.continual.methods.finetune import ce_loss
from madapt.continual.stream import BatchStream
from madapt.registry import register


class ZSCLConfig(MethodConfig):
    name: Literal["zscl"] = "zscl"
    image_weight: float = Field(1.0, ge=0.0, description="image-side distillation weight (--image_loss)")
    text_weight: float = Field(1.0, ge=0.0, description="text-side distillation weight (--text_loss)")
    temperature: float = Field(2.0, gt=0.0, description="--T")
    l2: float = Field(
        1.0, ge=0.0, description="weight of the summed squared distance to task-start weights (--l2)"
    )
    average_every: int = Field(100, ge=1, description="weight-ensemble period in steps (--avg_freq)")
    weight_ensemble: bool = Field(True, description="--we")
    reference_batch_size: int = Field(
        64, ge=1, description="reference images per step (ZSCL: --batch-size 64)"
    )


@register("method", "zscl")
class ZSCL(ContinualMethod):
    Config = ZSCLConfig
    needs_reference = True

    def __init__(self, cfg: ZSCLConfig) -> None:
        self.cfg = cfg
        self.start: dict[str, torch.Tensor] = {}
        self.average: dict[str, torch.Tensor] = {}
        self.n_averaged = 0

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return all_but_logit_scale(model)

    @torch.no_grad()
    def before_task(self, ctx) -> None:
        self.teacher = frozen_copy(ctx.model)
        self.teacher.load_state_dict(ctx.pretrained)
        tokens = ctx.backbone.tokenize(ctx.reference.captions).to(ctx.device)
        self.caption_feats = torch.cat(
            [F.normalize(self.teacher.encode_text(chunk).float(), dim=-1) for chunk in tokens.split(512)]
        )
        self.references = BatchStream(
            ctx.reference.images,
            self.cfg.reference_batch_size,
            ctx.settings.seed * 17 + ctx.task,
            ctx.settings.num_workers,
        )
        self.start = snapshot(ctx.model)
        # without the ensemble no second model copy is kept (a ViT-B/16 copy is 600 MB per checkpoint)
        self.average = {k: v.clone() for k, v in self.start.items()} if self.cfg.weight_ensemble else {}
        self.n_averaged = 1

    @torch.no_grad()
    def _absorb(self, model: torch.nn.Module) -> None:
        n = self.n_averaged
        for name, p in model.named_parameters():
            self.average[name].mul_(n).add_(p.detach()).div_(n + 1)
        self.n_averaged = n + 1

    def loss(self, batch, ctx) -> torch.Tensor:
        loss = ce_loss(batch, ctx)
        images = self.references.images(ctx.step).to(ctx.device)
        scale = ctx.settings.logit_scale
        with torch.no_grad():
            t_logits = (
                scale * F.normalize(self.teacher.encode_image(images).float(), dim=-1) @ self.caption_feats.T
            )
        s_logits = scale * F.normalize(ctx.model.encode_image(images).float(), dim=-1) @ self.caption_feats.T
        loss = loss + self.cfg.image_weight * distillation(t_logits, s_logits, self.cfg.temperature)
        loss = loss + self.cfg.text_weight * distillation(t_logits.T, s_logits.T, self.cfg.temperature)
        if self.cfg.l2 > 0:
            params = dict(ctx.model.named_parameters())
            loss = loss + self.cfg.l2 * sum(
                ((params[n] - w) ** 2).sum() for n, w in self.start.items() if params[n].requires_grad
            )
        return loss

    def after_step(self, ctx) -> None:
        if self.cfg.weight_ensemble and ctx.step % self.cfg.average_every == 0:
            self._absorb(ctx.model)

    def after_task(self, ctx) -> None:
        if self.cfg.weight_ensemble:
            self._absorb(ctx.model)
            assign(ctx.model, self.average)
        self.teacher = None
        self.start, self.average, self.n_averaged = {}, {}, 0

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "n_averaged": self.n_averaged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average = {k: v.clone() for k, v in state.get("average", {}).items()}
        self.n_averaged = int(state.get("n_averaged", 0))
