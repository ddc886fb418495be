"""LwF and LwF-VR for CLIP as ZSCL's code runs them (seed 000 Table 3.2 baselines).

ZSCL's ``scripts/lwf.sh`` runs its ZSCL loss with the *current* task as reference data and the
previous task's checkpoint as reference model (``--method ZSCL --image_loss --text_loss
--ref-dataset <current> --ref-model <previous>``; no ``--ref-model`` on the first task, so the
pretrained CLIP is the teacher there). Each step adds to the task loss:

- a second batch of the current task's training images (ZSCL's reference loader: its own shuffled
  stream, evaluation transforms), embedded by the teacher (no gradient) and by the student;
- texts: the current task's class prompts (first template) embedded by the *teacher* only; the
  student's text tower is not in the term;
- distillation at T = 2 of the teacher's image->text logits into the student's, and of their
  transposes (each text over the batch images), weights 1 and 1.

LwF-VR (``lwf_vr.sh``, ``--ref-sentences random``) replaces those texts by ZSCL's virtual
vocabulary: 1000 random sequences of 10 token ids (`random_token_texts`), drawn once per run from
the run's seed (ZSCL draws them once per task process from the same seed). No class name, of this
task or another, is used.

Deviation kept: both scripts also pass ``--fair``, a flag the released ``finetune.py`` and
``args.py`` do not define (an ImageNet-expansion experiment of another commit); it is ignored.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from madapt.backbones.clip import random_token_texts
from madapt.continual.losses import all_but_logit_scale, distillation, frozen_copy
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.continual.methods.finetune import ce_loss
from madapt.continual.stream import BatchStream
from madapt.registry import register


class LwFConfig(MethodConfig):
    name: Literal["lwf"] = "lwf"
    image_weight: float = Field(
        1.0, ge=0.0, description="image->text distillation weight (ZSCL --image_loss)"
    )
    text_weight: float = Field(1.0, ge=0.0, description="text->image (transposed) weight (ZSCL --text_loss)")
    temperature: float = Field(2.0, gt=0.0, description="distillation temperature (ZSCL --T 2)")
    reference_batch_size: int | None = Field(
        None,
        ge=1,
        description="distilled images per step (ZSCL: its --batch-size, i.e. the training batch size)",
    )


class LwFVRConfig(LwFConfig):
    name: Literal["lwf_vr"] = "lwf_vr"
    sentences: int = Field(1000, ge=1, description="random sequences (ZSCL virtual_vocab n_class=1000)")
    sentence_length: int = Field(
        10, ge=1, description="token ids per sequence (ZSCL virtual_vocab length=10)"
    )


@register("method", "lwf")
class LwF(ContinualMethod):
    Config = LwFConfig

    def __init__(self, cfg: LwFConfig) -> None:
        self.cfg = cfg
        self.teacher: torch.nn.Module | None = None
        self.text_feats: torch.Tensor | None = None
        self.images: BatchStream | None = None

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return all_but_logit_scale(model)

    def distill_tokens(self, ctx) -> torch.Tensor:
        """The current task's class prompts with the training template."""
        return ctx.class_tokens(ctx.task, ensemble=False)

    @torch.no_grad()
    def before_task(self, ctx) -> None:
        self.teacher = frozen_copy(ctx.model)  # the task-start model: theta_0 on the first task
        tokens = self.distill_tokens(ctx).to(ctx.device)
        self.text_feats = torch.cat(
            [F.normalize(self.teacher.encode_text(c).float(), dim=-1) for c in tokens.split(512)]
        )
        size = self.cfg.reference_batch_size or ctx.settings.batch_size
        self.images = BatchStream(
            ctx.current.distill_images,
            size,
            ctx.settings.seed * 17 + 1000 + ctx.task,
            ctx.settings.num_workers,
        )

    def loss(self, batch, ctx) -> torch.Tensor:
        loss = ce_loss(batch, ctx)
        images = self.images.images(ctx.step).to(ctx.device)
        scale = ctx.settings.logit_scale
        with torch.no_grad():
            t_logits = (
                scale * F.normalize(self.teacher.encode_image(images).float(), dim=-1) @ self.text_feats.T
            )
        s_logits = scale * F.normalize(ctx.model.encode_image(images).float(), dim=-1) @ self.text_feats.T
        loss = loss + self.cfg.image_weight * distillation(t_logits, s_logits, self.cfg.temperature)
        return loss + self.cfg.text_weight * distillation(t_logits.T, s_logits.T, self.cfg.temperature)

    def after_task(self, ctx) -> None:
        self.teacher = self.text_feats = self.images = None


@register("method", "lwf_vr")
class LwFVR(LwF):
    """LwF with ZSCL's virtual vocabulary as the distilled text side."""

    Config = LwFVRConfig

    def distill_tokens(self, ctx) -> torch.Tensor:
        generator = torch.Generator().manual_seed(ctx.settings.seed)
        return random_token_texts(
            ctx.backbone.tokenizer, self.cfg.sentences, self.cfg.sentence_length, generator
        )
