"""iCaRL-style rehearsal for CLIP (seed 000 Table 3.2 baseline; Rebuffi et al. 2017).

An exemplar memory keeps ``memory_per_class`` training images of every class of earlier tasks
(chosen at random with the run's seed; stored as indices, so checkpoints stay small). Each step adds
a replay batch: cross-entropy over the replayed sample's own task classes plus distillation from the
task-start model on the same logits.
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
from madapt.continual.engine import batch_indices
from madapt.registry import register


class ICaRLConfig(Strict):
    name: Literal["icarl"] = "icarl"
    memory_per_class: int = Field(5, ge=1, description="exemplars kept per class of earlier tasks")
    replay_batch_size: int = Field(32, ge=1, description="replayed exemplars per step")
    distill_weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)


def class_labels(dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(labels if not torch.is_tensor(labels) else labels.numpy())


@register("method", "icarl")
class ICaRL:
    Config = ICaRLConfig

    def __init__(self, memory_per_class: int = 5, replay_batch_size: int = 32, distill_weight: float = 1.0,
                 temperature: float = 2.0, **_: Any) -> None:
        self.per_class, self.replay_bs = memory_per_class, replay_batch_size
        self.distill_weight, self.temperature = distill_weight, temperature
        self.memory: list[tuple[int, int]] = []  # (task, index into that task's train split)
        self.teacher: torch.nn.Module | None = None

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return all_but_logit_scale(model)

    def before_task(self, ctx) -> None:
        self.teacher = frozen_copy(ctx.model) if self.memory else None

    def replay(self, ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        picks = batch_indices(len(self.memory), self.replay_bs, ctx.step, ctx.settings.seed * 31 + ctx.task)
        items = [self.memory[i] for i in picks]
        images, labels = zip(*(ctx.tasks[t].train[i] for t, i in items))
        tasks = torch.tensor([t for t, _ in items])
        return torch.stack(images).to(ctx.device), torch.as_tensor(labels).to(ctx.device), tasks

    def loss(self, batch, ctx) -> torch.Tensor:
        loss = ce_loss(batch, ctx)
        if not self.memory:
            return loss
        images, labels, tasks = self.replay(ctx)
        scale = ctx.settings.logit_scale
        s_img = F.normalize(ctx.model.encode_image(images).float(), dim=-1)
        with torch.no_grad():
            t_img = F.normalize(self.teacher.encode_image(images).float(), dim=-1)
        for t in tasks.unique().tolist():
            rows = tasks == t
            s_logits = scale * s_img[rows] @ ctx.text_head(ctx.model, t, ensemble=False).T
            loss = loss + F.cross_entropy(s_logits, labels[rows], label_smoothing=ctx.settings.label_smoothing) * rows.float().mean()
            with torch.no_grad():
                t_logits = scale * t_img[rows] @ ctx.text_head(self.teacher, t, ensemble=False).T
            loss = loss + self.distill_weight * distillation(t_logits, s_logits, self.temperature) * rows.float().mean()
        return loss

    def after_task(self, ctx) -> None:
        labels = class_labels(ctx.current.train)
        rng = np.random.default_rng([ctx.settings.seed, 4242, ctx.task])
        for c in range(ctx.current.n_classes):
            members = np.flatnonzero(labels == c)
            chosen = rng.choice(members, size=min(self.per_class, len(members)), replace=False)
            self.memory.extend((ctx.task, int(i)) for i in sorted(chosen))
        self.teacher = None

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        return ctx.clip_logits(ctx.model, images, task)

    def state_dict(self) -> dict[str, Any]:
        return {"memory": [list(m) for m in self.memory],
                "teacher": self.teacher.state_dict() if self.teacher is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = [(int(t), int(i)) for t, i in state.get("memory", [])]
        if self.teacher is not None and state.get("teacher"):
            self.teacher.load_state_dict(state["teacher"])
