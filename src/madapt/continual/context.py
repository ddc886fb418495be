"""What a continual method may look at: the run's settings and the `Context` of the current task.

`TrainSettings` is flattened from the recipe config (configs never reach into the engine);
`Context` carries the backbone, the task list, the pretrained weights theta_0 and caches of
token ids and evaluation heads (CLIP's zero-shot classifier, ZSCL's template ensemble).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from madapt.backbones.clip import ClipBackbone
from madapt.continual.tasks import Task
from madapt.training import Processes

TaskAgnostic = Literal["off", "union", "per_dataset"]


@dataclass
class TrainSettings:
    """The engine's knobs (ZSCL's protocol by default, seed 000 §3.5.2)."""

    iterations: list[int]  # optimizer steps of each task, in training order
    batch_size: int
    lrs: list[float]  # one per task, in training order
    warmup_steps: int = 100
    weight_decay: float = 0.0
    label_smoothing: float = 0.2
    logit_scale: float = 100.0
    eval_batch_size: int = 256
    checkpoint_every: int = 100
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    num_workers: int = 0
    task_agnostic: TaskAgnostic = "off"
    class_incremental: bool = False  # CIL: after step i, predict among all classes seen so far
    seed: int = 0


@dataclass
class Context:
    """Everything a method may look at. ``heads`` caches evaluation text embeddings per model.

    ``task_id_known`` is False while evaluating without task identity: the label space is still
    the one ``logits`` receives (one dataset's classes, or all of them for ``task=None``), but a
    method must not pick a per-task expert or router from it (seed 002's task-agnostic MTIL).
    """

    backbone: ClipBackbone
    tasks: list[Task]
    settings: TrainSettings
    device: torch.device
    task: int = 0
    step: int = 0
    micro_batch: int = 0  # index of the micro-batch within the step (``train.accumulate``)
    task_id_known: bool = True
    pretrained: dict[str, torch.Tensor] = field(
        default_factory=dict, repr=False
    )  # theta_0, set by the engine
    reference: Any = None  # reference images/captions for distillation methods (ZSCL, AwoF)
    artifacts: Path | None = (
        None  # the method's folder for write-once files (finished experts), set by the recipe
    )
    processes: Processes = field(default_factory=Processes)
    _tokens: dict[tuple[int, bool], torch.Tensor] = field(default_factory=dict, repr=False)
    _heads: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> torch.nn.Module:
        return self.backbone.model

    @property
    def current(self) -> Task:
        return self.tasks[self.task]

    @property
    def iterations(self) -> int:
        """Optimizer steps of the current task."""
        return self.settings.iterations[self.task]

    @property
    def lr(self) -> float:
        """Base learning rate of the current task (ZSCL: per task)."""
        return self.settings.lrs[self.task]

    def autocast(self):
        """bf16 / fp16 autocast as the run's precision asks (fp32: no autocast)."""
        if self.settings.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.settings.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def class_tokens(self, task: int, ensemble: bool) -> torch.Tensor:
        """Token ids of the class prompts of ``task`` (n_classes * n_templates rows), cached."""
        key = (task, ensemble)
        if key not in self._tokens:
            texts = [t for per_class in self.tasks[task].texts(ensemble) for t in per_class]
            self._tokens[key] = self.backbone.tokenize(texts).to(self.device)
        return self._tokens[key]

    def text_head(self, model: torch.nn.Module, task: int, ensemble: bool) -> torch.Tensor:
        """Normalised class embeddings; averaged over templates when ``ensemble`` (ZSCL eval)."""
        tokens = self.class_tokens(task, ensemble)
        feats = F.normalize(model.encode_text(tokens).float(), dim=-1)
        n = self.tasks[task].n_classes
        feats = feats.view(n, -1, feats.shape[-1]).mean(dim=1)
        return F.normalize(feats, dim=-1)

    def eval_head(self, model: torch.nn.Module, task: int | None) -> torch.Tensor:
        """The evaluation head of one task, or of all tasks concatenated (task-agnostic), cached."""
        tasks = range(len(self.tasks)) if task is None else [task]
        heads = []
        for t in tasks:
            key = (id(model), t)
            if key not in self._heads:
                with torch.no_grad(), self.autocast():
                    self._heads[key] = self.text_head(model, t, ensemble=True)
            heads.append(self._heads[key])
        return torch.cat(heads)

    def forget_heads(self) -> None:
        """Called whenever weights may have changed (after training a task, after a merge)."""
        self._heads.clear()

    def clip_logits(self, model: torch.nn.Module, images: torch.Tensor, task: int | None) -> torch.Tensor:
        """scale * <image, class text> with the evaluation head: the zero-shot classifier."""
        feats = F.normalize(model.encode_image(images).float(), dim=-1)
        return self.settings.logit_scale * feats @ self.eval_head(model, task).T

    def train_logits(
        self, model: torch.nn.Module, images: torch.Tensor, task: int | None = None
    ) -> torch.Tensor:
        """Training logits over the current task's classes with the first template (ZSCL)."""
        task = self.task if task is None else task
        feats = F.normalize(model.encode_image(images).float(), dim=-1)
        return self.settings.logit_scale * feats @ self.text_head(model, task, ensemble=False).T
