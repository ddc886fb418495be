"""Continual fine-tuning and individual fine-tuning (seed 000 Table 3.2 baselines).

Continual FT trains all CLIP weights (but the temperature) task after task with ZSCL's loss:
cross-entropy with label smoothing over the current task's classes, texts from the first template
through the trainable text encoder (ZSCL ``finetune.py``, ``--train-mode whole``). Individual FT
restarts every task from the pretrained weights: the per-task upper bound, and the starting point
of ConDU (seed 002).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from madapt.continual.losses import all_but_logit_scale
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.registry import register
from madapt.runs import load_tensors, save_tensors


class FinetuneConfig(MethodConfig):
    name: Literal["finetune"] = "finetune"


class IndividualConfig(MethodConfig):
    name: Literal["individual"] = "individual"


def ce_loss(batch: tuple[torch.Tensor, torch.Tensor], ctx) -> torch.Tensor:
    """ZSCL's task loss: CE with label smoothing on scale * <img, first-template class text>."""
    images, labels = batch
    logits = ctx.train_logits(ctx.model, images)
    return F.cross_entropy(logits, labels, label_smoothing=ctx.settings.label_smoothing)


@register("method", "finetune")
class Finetune(ContinualMethod):
    Config = FinetuneConfig

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return all_but_logit_scale(model)

    def loss(self, batch, ctx) -> torch.Tensor:
        return ce_loss(batch, ctx)


@register("method", "individual")
class Individual(Finetune):
    """Each task fine-tuned alone from the pretrained weights: the per-dataset upper bound.

    As "Individual FT" in seed 002 Tables 1-3 every task is predicted by its own expert (the task id
    selects it); tasks not trained yet are predicted by the pretrained model. Without a task id
    (task-agnostic or class-incremental evaluation) the latest expert predicts. Row i of the accuracy
    matrix therefore holds expert j on task j for j <= i and zero-shot beyond: Last is the mean of
    the experts' own accuracies. Each finished expert is written once, as ``expert_<task>.safetensors``
    in the method's artifact folder (one model copy per task, which is the method's storage cost);
    checkpoints only list which experts exist.
    """

    Config = IndividualConfig

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__(cfg)
        self.experts: list[int] = []  # tasks whose expert is on disk
        self._spare: torch.nn.Module | None = None  # a second model that holds one expert at a time
        self._loaded: str | None = None
        self._folder: Path | None = None

    def setup(self, ctx) -> None:
        if ctx.artifacts is None:
            raise ValueError("individual fine-tuning keeps its experts as files: ctx.artifacts must be set")
        self._folder = ctx.artifacts

    def expert_file(self, task: int) -> Path:
        return self._folder / f"expert_{task}.safetensors"

    def expert(self, task: int) -> dict[str, torch.Tensor]:
        return load_tensors(self.expert_file(task))

    def before_task(self, ctx) -> None:
        ctx.model.load_state_dict(ctx.pretrained)

    def after_task(self, ctx) -> None:
        save_tensors(self.expert_file(ctx.task), ctx.model.state_dict())
        self.experts = sorted({*self.experts, ctx.task})

    def uses_pretrained(self, task: int, ctx) -> bool:
        return ctx.task_id_known and task > ctx.task

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        if task is None or task == ctx.task or not ctx.task_id_known:
            return ctx.clip_logits(ctx.model, images, task)
        key = str(task) if task in self.experts else "pretrained"
        if self._spare is None:
            self._spare = copy.deepcopy(ctx.model).eval()
        if self._loaded != key:
            self._spare.load_state_dict(self.expert(task) if key != "pretrained" else ctx.pretrained)
            self._loaded = key
            # the head cache is per model object: the spare's heads belong to the expert just replaced
            ctx.forget_heads()
        return ctx.clip_logits(self._spare, images, task)

    def state_dict(self) -> dict[str, Any]:
        return {"experts": self.experts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.experts = [int(t) for t in state.get("experts", [])]
        self._loaded = None
