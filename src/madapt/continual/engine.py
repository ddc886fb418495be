"""The continual-learning task loop shared by every CLIP method (ZSCL's protocol, seed 000 §3.5).

For each task in order: ``before_task`` -> ``iterations`` optimizer steps on ``method.loss`` (the
method's optimizer and schedule: AdamW with linear warmup then cosine by default, label smoothing
inside the loss, ``train.accumulate`` micro-batches per step) -> ``after_task`` -> evaluate every
dataset of the sequence (one row of the accuracy matrix).

Resume contract. Checkpoints are taken every ``checkpoint_every`` steps, after training a task and
at each task start; the task-start checkpoint is kept (tag ``task_start``) until the next task
starts. Resuming inside a task restores the task-start model, method state and RNG, runs
``before_task`` exactly as the uninterrupted run did, then restores the mid-task weights, method
state, optimizer, scheduler and RNG. Batches are a pure function of (seed, task, step) and
augmentation is seeded per sample, so a killed run reaches the same weights bit for bit on CPU.
The method's state is always restored before the weights (a method that grows modules per task
rebuilds them first, then the weights load strictly).

Under ``accelerate launch`` (``Context.processes``) every process trains the same model on its
slice of each global batch, gradients are averaged after every step, evaluation sets are sharded
and their counts summed, and only the main process writes checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from madapt.continual.context import Context
from madapt.continual.method import ContinualMethod
from madapt.continual.stream import eval_batches, micro_batches, train_batches
from madapt.runs import Checkpoint, Checkpointer, rng_state, set_rng_state

TASK_START = "task_start"


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(method: ContinualMethod, ctx: Context, task: int) -> float:
    """Top-1 accuracy (%) on ``task``'s test split under the run's evaluation protocol.

    MTIL: logits over the task's classes with the task id. Task-agnostic ``union``: over all
    classes of the sequence; ``per_dataset`` (seed 002): over the task's classes, without the task
    id (``ctx.task_id_known`` False). CIL: over the classes seen so far.
    """
    ctx.model.eval()
    spec, mode = ctx.tasks[task], ctx.settings.task_agnostic
    ctx.task_id_known = mode == "off" and not ctx.settings.class_incremental
    correct = total = 0
    for images, labels in eval_batches(
        spec.test, ctx.settings.eval_batch_size, ctx.settings.num_workers, ctx.processes
    ):
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        with ctx.autocast():
            if ctx.settings.class_incremental:
                seen = ctx.current.class_offset + ctx.current.n_classes
                pred = method.logits(images, None, ctx)[:, :seen].float().argmax(dim=-1) - spec.class_offset
            elif mode == "union":
                pred = method.logits(images, None, ctx).float().argmax(dim=-1) - spec.class_offset
            else:
                pred = method.logits(images, task, ctx).float().argmax(dim=-1)
        correct += int((pred == labels).sum())
        total += len(labels)
    ctx.task_id_known = True
    correct, total = ctx.processes.sum([correct, total])
    return 100.0 * correct / max(total, 1)


def evaluation_row(
    method: ContinualMethod, ctx: Context, zero_shot: Callable[[int], float] | None = None
) -> list[float | None]:
    """Accuracy on every dataset after the current task; CIL rows stop at the current step (unseen
    classes are not in the label space yet). Datasets the method predicts with the untouched
    pretrained model take the run's zero-shot accuracy instead of a second evaluation."""
    if not method.text_frozen:
        ctx.forget_heads()
    row: list[float | None] = []
    for j in range(len(ctx.tasks)):
        if ctx.settings.class_incremental and j > ctx.task:
            row.append(None)
        elif zero_shot is not None and not ctx.settings.class_incremental and method.uses_pretrained(j, ctx):
            row.append(zero_shot(j))
        else:
            row.append(evaluate(method, ctx, j))
    return row


# ---------------------------------------------------------------------------------------------
# Model state as a delta from the pretrained weights


def changed_params(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Entries of the state dict that differ from ``reference`` (checkpoints stay small for PEFT)."""
    return {
        k: v for k, v in model.state_dict().items() if k not in reference or not torch.equal(v, reference[k])
    }


def load_changed(
    model: torch.nn.Module, reference: dict[str, torch.Tensor], changed: dict[str, torch.Tensor]
) -> None:
    model.load_state_dict({**reference, **changed}, strict=True)


# ---------------------------------------------------------------------------------------------
# The loop


class _Run:
    """One method over the task sequence: the named steps `run_sequence` strings together."""

    def __init__(
        self,
        method: ContinualMethod,
        ctx: Context,
        checkpointer: Checkpointer,
        progress: Callable[[str, int, int], None] | None,
        zero_shot: Callable[[int], float] | None,
    ) -> None:
        self.method, self.ctx, self.checkpointer = method, ctx, checkpointer
        self.report = progress or (lambda *_: None)
        self.zero_shot = zero_shot
        self.acc: list[list[float | None]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None

    # -- state ------------------------------------------------------------------------------

    def save(self, task: int, step: int, phase: str, tag: str | None = None) -> None:
        if not self.ctx.processes.is_main:  # the other processes hold the same state
            return
        state = {
            "acc": self.acc,
            "model": changed_params(self.ctx.model, self.ctx.pretrained),
            "method": self.method.state_dict(),
            "rng": rng_state(),
        }
        if phase == "train" and step > 0:
            state |= {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
        self.checkpointer.save({"task": task, "step": step, "phase": phase}, state, tag=tag)

    def restore(self, saved: Checkpoint) -> None:
        """Method state first (it may rebuild modules), then the weights, strictly; then the RNG."""
        self.acc = [[None if v is None else float(v) for v in row] for row in saved.state["acc"]]
        self.method.load_state_dict(saved.state["method"])
        load_changed(self.ctx.model, self.ctx.pretrained, saved.state["model"])
        set_rng_state(saved.state["rng"])

    # -- steps ------------------------------------------------------------------------------

    def start_task(self, task: int, resume_at: Checkpoint | None) -> int:
        """``before_task`` on the task-start model, the method's optimizer; returns the first step."""
        ctx, method = self.ctx, self.method
        ctx.task, ctx.step = task, 0
        ctx.model.train()
        method.before_task(ctx)
        if not method.trains:
            return ctx.iterations
        params = method.trainable_parameters(ctx.model)
        self.optimizer = method.optimizer(params, ctx)
        self.scheduler = method.schedule(self.optimizer, ctx)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if ctx.settings.precision == "fp16" else None
        if resume_at is None:
            return 0
        self.restore(resume_at)
        self.optimizer.load_state_dict(resume_at.state["optimizer"])
        self.scheduler.load_state_dict(resume_at.state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(resume_at.state["scaler"])
        return int(resume_at.unit["step"])

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """One optimizer step over ``train.accumulate`` micro-batches (their losses averaged)."""
        ctx, method, optimizer = self.ctx, self.method, self.optimizer
        k = ctx.settings.accumulate
        optimizer.zero_grad(set_to_none=True)
        for ctx.micro_batch, micro in enumerate(micro_batches(batch, k)):
            with ctx.autocast():
                loss = method.loss(tuple(t.to(ctx.device) for t in micro), ctx) / k
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        ctx.micro_batch = 0
        ctx.processes.mean_grads(p for group in optimizer.param_groups for p in group["params"])
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        self.scheduler.step()
        method.after_step(ctx)

    def train_task(self, task: int, first_step: int) -> None:
        ctx, every = self.ctx, self.ctx.settings.checkpoint_every
        if self.method.trains:
            for step, batch in enumerate(
                train_batches(ctx.current.train, ctx.settings, task, first_step, ctx.processes),
                start=first_step,
            ):
                ctx.step = step
                self.train_step(batch)
                self.report(ctx.current.name, step + 1, ctx.iterations)
                if (step + 1) % every == 0 and step + 1 < ctx.iterations:
                    self.save(task, step + 1, "train")
        ctx.step = ctx.iterations
        self.method.after_task(ctx)
        self.save(task, ctx.iterations, "trained")

    def run(self) -> list[list[float | None]]:
        ctx = self.ctx
        ctx.processes.barrier()  # no process may read a checkpoint while the main one could replace it
        saved = self.checkpointer.load()
        task, phase = 0, "train"
        if saved is None:
            self.save(0, 0, "train", tag=TASK_START)
        else:
            task, phase = int(saved.unit["task"]), saved.unit["phase"]
            at_start = phase == "train" and int(saved.unit["step"]) == 0
            self.restore(saved if at_start or phase == "trained" else self.checkpointer.load(TASK_START))
        while task < len(ctx.tasks):
            ctx.task = task
            if phase == "train":
                mid_task = saved is not None and saved.unit["phase"] == "train" and saved.unit["step"] > 0
                first = self.start_task(task, saved if mid_task else None)
                saved = None
                self.train_task(task, first)
            ctx.step = ctx.iterations
            self.acc.append(evaluation_row(self.method, ctx, self.zero_shot))
            task, phase, saved = task + 1, "train", None
            self.save(task, 0, "train", tag=TASK_START)
        return self.acc


def run_sequence(
    method: ContinualMethod,
    ctx: Context,
    checkpointer: Checkpointer,
    progress: Callable[[str, int, int], None] | None = None,
    zero_shot: Callable[[int], float] | None = None,
) -> list[list[float | None]]:
    """Train and evaluate ``method`` over ``ctx.tasks``; returns the T x T accuracy matrix.

    ``method.setup`` runs first, then theta_0 (with whatever setup injected) is snapshotted into
    ``ctx.pretrained``. ``zero_shot(j)``, when given, is the pretrained model's accuracy on dataset
    j under the run's protocol (the recipe computes it once per run for every method); without it
    every entry is evaluated.
    """
    method.setup(ctx)
    ctx.pretrained = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    return _Run(method, ctx, checkpointer, progress, zero_shot).run()


def lrs_for(order: Sequence[str], default: float, per_task: dict[str, float]) -> list[float]:
    """Per-task learning rates in training order (ZSCL: 5e-5 for Aircraft and MNIST, else 1e-5)."""
    return [float(per_task.get(name, default)) for name in order]
