"""iCaRL for CLIP as ZSCL's code runs it (seed 000 Table 3.2 baseline; ZSCL ``models/icarl.py``).

ZSCL's ``DynamicDataset`` keeps a memory of ``--memory_size`` (10,000) training images, stored under
the evaluation transforms, one list per seen dataset in training order:

- after the first task: its first ``memory_size`` training images, in dataset order (no herding);
- after task t (t datasets seen): every older list is cut to its first ``K // t`` entries, and the
  new dataset contributes ``K - K // t`` images chosen by herding on the L2-normalised image
  features of the model just trained, over its first 30,000 training images: pick k minimises
  ||mean - (f + sum of picked) / (k + 1)||^2 (the mean is of the normalised features). As in
  ZSCL, the total can exceed K once three or more datasets are seen (K//t per old list plus
  K - K//t new); we keep that arithmetic.

Training on a later task adds, to the task loss (cross-entropy on the current task only), a
replay batch: the memory concatenated in dataset order and read in consecutive chunks of the
training batch size (the last one partial), cycling. The replayed images are distilled at T = 2
from the frozen *pretrained* CLIP (ZSCL leaves ``--ref-model`` unset) against the current task's
class prompts embedded by the teacher, image->text and transposed, weights 1 and 1 (as its
ZSCL loss with ``--image_loss --text_loss``; the repo's ``icarl.sh`` is a 5-iteration debug line).
The first task is plain fine-tuning (ZSCL calls ``pure_finetune`` for it).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Subset

from madapt.continual.losses import all_but_logit_scale, distillation, frozen_copy
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.continual.methods.finetune import ce_loss
from madapt.continual.stream import BatchStream, eval_batches
from madapt.registry import register


class ICaRLConfig(MethodConfig):
    name: Literal["icarl"] = "icarl"
    memory_size: int = Field(10_000, ge=1, description="exemplar images kept (ZSCL --memory_size 10000)")
    herding_pool: int = Field(
        30_000, ge=1, description="herding reads a task's first images only (ZSCL: 30,000)"
    )
    replay_batch_size: int | None = Field(
        None, ge=1, description="replayed images per step (ZSCL: --batch-size)"
    )
    image_weight: float = Field(1.0, ge=0.0)
    text_weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)


def herding(features: torch.Tensor, m: int) -> list[int]:
    """ZSCL's herding order: ``m`` row indices of ``features`` (already L2-normalised), greedily
    keeping the running mean of the picked rows closest to the mean of all rows."""
    feats = features.double()
    mean = feats.mean(dim=0)
    left = torch.ones(len(feats), dtype=torch.bool)
    picked: list[int] = []
    total = torch.zeros_like(mean)
    for k in range(min(m, len(feats))):
        dist = ((mean - (feats + total) / (k + 1)) ** 2).sum(dim=1)
        dist[~left] = float("inf")
        i = int(torch.argmin(dist))
        picked.append(i)
        total += feats[i]
        left[i] = False
    return picked


@register("method", "icarl")
class ICaRL(ContinualMethod):
    Config = ICaRLConfig

    def __init__(self, cfg: ICaRLConfig) -> None:
        self.cfg = cfg
        self.memory: list[
            tuple[int, list[int]]
        ] = []  # (task, indices into its distill_images), training order

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return all_but_logit_scale(model)

    def memory_dataset(self, ctx) -> torch.utils.data.Dataset:
        parts = [Subset(ctx.tasks[t].distill_images, idx) for t, idx in self.memory]
        return torch.utils.data.ConcatDataset(parts)

    @torch.no_grad()
    def before_task(self, ctx) -> None:
        self.replay = None
        if not self.memory:
            return
        self.teacher = frozen_copy(ctx.model)
        self.teacher.load_state_dict(ctx.pretrained)
        tokens = ctx.class_tokens(ctx.task, ensemble=False)
        self.text_feats = F.normalize(self.teacher.encode_text(tokens).float(), dim=-1)
        size = self.cfg.replay_batch_size or ctx.settings.batch_size
        self.replay = BatchStream(
            self.memory_dataset(ctx), size, 0, ctx.settings.num_workers, sequential=True
        )

    def loss(self, batch, ctx) -> torch.Tensor:
        loss = ce_loss(batch, ctx)
        if self.replay is None:
            return loss
        images = self.replay.images(ctx.step).to(ctx.device)
        scale = ctx.settings.logit_scale
        with torch.no_grad():
            t_logits = (
                scale * F.normalize(self.teacher.encode_image(images).float(), dim=-1) @ self.text_feats.T
            )
        s_logits = scale * F.normalize(ctx.model.encode_image(images).float(), dim=-1) @ self.text_feats.T
        loss = loss + self.cfg.image_weight * distillation(t_logits, s_logits, self.cfg.temperature)
        return loss + self.cfg.text_weight * distillation(t_logits.T, s_logits.T, self.cfg.temperature)

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        self.replay = self.teacher = None
        k, n = self.cfg.memory_size, len(ctx.current.distill_images)
        if not self.memory:
            self.memory = [(ctx.task, list(range(min(k, n))))]
            return
        t = len(self.memory) + 1
        self.memory = [(task, idx[: k // t]) for task, idx in self.memory]
        pool = Subset(ctx.current.distill_images, range(min(self.cfg.herding_pool, n)))
        ctx.model.eval()
        feats = []
        for images, *_ in eval_batches(pool, ctx.settings.eval_batch_size, ctx.settings.num_workers):
            with ctx.autocast():
                feats.append(F.normalize(ctx.model.encode_image(images.to(ctx.device)).float(), dim=-1).cpu())
        self.memory.append((ctx.task, herding(torch.cat(feats), k - k // t)))

    def state_dict(self) -> dict[str, Any]:
        return {"memory": [[t, torch.tensor(idx, dtype=torch.int64)] for t, idx in self.memory]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = [(int(t), [int(i) for i in idx]) for t, idx in state.get("memory", [])]
