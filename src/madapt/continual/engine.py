"""The continual-learning task loop shared by every CLIP method (ZSCL's protocol, seed 000 §3.5).

For each task in order: ``before_task`` -> ``iterations`` optimizer steps on ``method.loss`` (AdamW,
linear warmup then cosine, label smoothing inside the loss) -> ``after_task`` -> evaluate every
dataset of the sequence (one row of the accuracy matrix). Checkpoints are taken every
``checkpoint_every`` steps and at each phase boundary, so a run killed at any moment resumes to the
same accuracy matrix: batches are a pure function of (seed, task, step), augmentation randomness is
seeded per sample, and the RNG/optimizer/scheduler/method states travel in the checkpoint.

Under ``accelerate launch`` (``Context.processes``) every process trains the same model on its
slice of each global batch, gradients are averaged after every backward pass, evaluation sets are
sharded and their counts summed, and only the main process writes checkpoints: the run follows the
single-process trajectory up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from madapt.backbones.clip import ClipBackbone
from madapt.continual.tasks import Task
from madapt.runs import Checkpointer, rng_state, set_rng_state
from madapt.training import Processes, build_optimizer, warmup_cosine


class ContinualMethod(Protocol):
    """What the engine calls (DESIGN.md, "Core interfaces"). No base class is required."""

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]: ...
    def before_task(self, ctx: "Context") -> None: ...
    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], ctx: "Context") -> torch.Tensor: ...
    def after_task(self, ctx: "Context") -> None: ...
    def logits(self, images: torch.Tensor, task: int | None, ctx: "Context") -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainSettings:
    """The engine's knobs, flattened from the recipe config (configs never reach into the engine)."""

    iterations: int
    batch_size: int
    lrs: list[float]  # one per task, in training order
    warmup_steps: int = 100
    weight_decay: float = 0.0
    label_smoothing: float = 0.2
    logit_scale: float = 100.0
    eval_batch_size: int = 256
    checkpoint_every: int = 100
    bf16: bool = False
    num_workers: int = 0
    task_agnostic: bool = False
    class_incremental: bool = False  # CIL: after step i, predict among all classes seen so far
    seed: int = 0


@dataclass
class Context:
    """Everything a method may look at. ``heads`` caches evaluation text embeddings per model."""

    backbone: ClipBackbone
    tasks: list[Task]
    settings: TrainSettings
    device: torch.device
    task: int = 0
    step: int = 0
    pretrained: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # theta_0, set by the engine
    reference: Any = None  # reference images/captions for distillation methods (ZSCL, AwoF)
    processes: Processes = field(default_factory=Processes)
    _tokens: dict[tuple[int, bool], torch.Tensor] = field(default_factory=dict, repr=False)
    _heads: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> torch.nn.Module:
        return self.backbone.model

    @property
    def current(self) -> Task:
        return self.tasks[self.task]

    def autocast(self):
        if not self.settings.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

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

    def train_logits(self, model: torch.nn.Module, images: torch.Tensor, task: int | None = None) -> torch.Tensor:
        """Training logits over the current task's classes with the first template (ZSCL)."""
        task = self.task if task is None else task
        feats = F.normalize(model.encode_image(images).float(), dim=-1)
        return self.settings.logit_scale * feats @ self.text_head(model, task, ensemble=False).T


# ---------------------------------------------------------------------------------------------
# Deterministic data stream


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of batch ``step``: consecutive slices of per-epoch permutations (a pure function)."""
    start = step * batch_size
    out: list[int] = []
    epoch, offset = divmod(start, n)
    while len(out) < batch_size:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = perm[offset: offset + batch_size - len(out)]
        out.extend(int(i) for i in take)
        epoch, offset = epoch + 1, 0
    return out


class _SeededItems(Dataset):
    """Wraps a dataset so item (index, seed) draws its augmentation from its own seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def train_batches(dataset: Dataset, settings: TrainSettings, task: int, start: int,
                  processes: Processes = Processes()) -> Iterator[Any]:
    """Batches ``start..iterations-1`` of ``task``; identical whatever step the run resumes at.

    With several processes each yields its slice of the global batch; an item's augmentation seed
    is its position in the global batch, so the union of the slices is the single-process batch.
    """
    n = len(dataset)  # type: ignore[arg-type]
    stream_seed = settings.seed * 1_000_003 + task
    steps = range(start, settings.iterations)
    mine = processes.shard(settings.batch_size)
    if hasattr(dataset, "batch") and settings.num_workers == 0:
        for step in steps:
            indices = batch_indices(n, settings.batch_size, step, stream_seed)
            yield dataset.batch([indices[k] for k in mine])
        return
    sampler = (
        [(i, stream_seed * 7_919 + step * settings.batch_size + k)
         for k, i in enumerate(batch_indices(n, settings.batch_size, step, stream_seed)) if k in mine]
        for step in steps
    )
    yield from DataLoader(_SeededItems(dataset), batch_sampler=sampler, num_workers=settings.num_workers)


def eval_batches(dataset: Dataset, batch_size: int, num_workers: int,
                 processes: Processes = Processes()) -> Iterator[Any]:
    """This process's contiguous shard of ``dataset`` in order, ``batch_size`` items at a time."""
    mine = processes.shard(len(dataset))  # type: ignore[arg-type]
    if hasattr(dataset, "batch") and num_workers == 0:
        for start in range(mine.start, mine.stop, batch_size):
            yield dataset.batch(range(start, min(mine.stop, start + batch_size)))
        return
    yield from DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(method: ContinualMethod, ctx: Context, task: int) -> float:
    """Top-1 accuracy (%) on ``task``'s test split; task-agnostic uses the union of all classes."""
    ctx.model.eval()
    spec = ctx.tasks[task]
    correct = total = 0
    for images, labels in eval_batches(spec.test, ctx.settings.eval_batch_size, ctx.settings.num_workers,
                                       ctx.processes):
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        with ctx.autocast():
            if ctx.settings.class_incremental:
                seen = ctx.current.class_offset + ctx.current.n_classes
                logits = method.logits(images, None, ctx)[:, :seen]
                pred = logits.float().argmax(dim=-1) - spec.class_offset
            elif ctx.settings.task_agnostic:
                pred = method.logits(images, None, ctx).float().argmax(dim=-1) - spec.class_offset
            else:
                pred = method.logits(images, task, ctx).float().argmax(dim=-1)
        correct += int((pred == labels).sum())
        total += len(labels)
    correct, total = ctx.processes.sum([correct, total])
    return 100.0 * correct / max(total, 1)


# ---------------------------------------------------------------------------------------------
# Model state as a delta from the pretrained weights


def changed_params(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Entries of the state dict that differ from ``reference`` (checkpoints stay small for PEFT)."""
    return {k: v for k, v in model.state_dict().items() if k not in reference or not torch.equal(v, reference[k])}


def load_changed(model: torch.nn.Module, reference: dict[str, torch.Tensor], changed: dict[str, torch.Tensor]) -> None:
    state = {**reference, **changed}
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# The loop


def run_sequence(
    method: ContinualMethod,
    ctx: Context,
    checkpointer: Checkpointer,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[list[float | None]]:
    """Train and evaluate ``method`` over ``ctx.tasks``; returns the T x T accuracy matrix."""
    settings = ctx.settings
    pretrained = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    ctx.pretrained = pretrained
    trains = getattr(method, "trains", True)  # zero-shot evaluates only
    acc: list[list[float]] = []
    task, step, phase = 0, 0, "train"
    procs = ctx.processes
    procs.barrier()  # no process may read the checkpoint while the main one could be replacing it
    saved = checkpointer.load()
    resume_state: dict[str, Any] | None = None
    if saved is not None:
        task, step, phase = saved.unit["task"], saved.unit["step"], saved.unit["phase"]
        acc = [[None if v is None else float(v) for v in row] for row in saved.state["acc"]]
        load_changed(ctx.model, pretrained, saved.state["model"])
        resume_state = saved.state
    report = progress or (lambda *_: None)

    def checkpoint(t: int, s: int, ph: str, extra: dict[str, Any]) -> None:
        if not procs.is_main:  # the other processes hold the same state
            return
        state = {"acc": acc, "model": changed_params(ctx.model, pretrained), "method": method.state_dict(),
                 "rng": rng_state(), **extra}
        checkpointer.save({"task": t, "step": s, "phase": ph}, state)

    while task < len(ctx.tasks):
        ctx.task = task
        if phase == "train":
            ctx.model.train()
            # A checkpoint at a task boundary precedes before_task; one inside a task follows it, so
            # there the state is loaded on both sides: before (what before_task reads, e.g. a memory)
            # and after (what before_task rebuilt from the half-trained model, e.g. a teacher).
            if resume_state is not None:
                method.load_state_dict(resume_state["method"])
            if resume_state is not None and step == 0:
                set_rng_state(resume_state["rng"])
                resume_state = None
            method.before_task(ctx)
            if trains:
                params = method.trainable_parameters(ctx.model)
                optimizer = build_optimizer(params, name="adamw", lr=settings.lrs[task],
                                            weight_decay=settings.weight_decay)
                scheduler = warmup_cosine(optimizer, settings.warmup_steps, settings.iterations)
            if resume_state is not None:
                # before_task may have reset the weights (individual FT restarts from theta_0)
                load_changed(ctx.model, pretrained, resume_state["model"])
                method.load_state_dict(resume_state["method"])
                optimizer.load_state_dict(resume_state["optimizer"])
                scheduler.load_state_dict(resume_state["scheduler"])
                set_rng_state(resume_state["rng"])
                resume_state = None
            batches = train_batches(ctx.current.train, settings, task, step, procs) if trains else iter(())
            for images, labels in batches:
                ctx.step = step
                images, labels = images.to(ctx.device), labels.to(ctx.device)
                with ctx.autocast():
                    loss = method.loss((images, labels), ctx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                procs.mean_grads(p for group in optimizer.param_groups for p in group["params"])
                optimizer.step()
                scheduler.step()
                step += 1
                report(ctx.current.name, step, settings.iterations)
                if step % settings.checkpoint_every == 0 and step < settings.iterations:
                    checkpoint(task, step, "train",
                               {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
            ctx.step = settings.iterations
            method.after_task(ctx)
            phase = "trained"
            checkpoint(task, step, phase, {})
        elif resume_state is not None:
            # resumed between training and evaluation: the method's bookkeeping must come back too
            method.load_state_dict(resume_state["method"])
            set_rng_state(resume_state["rng"])
            resume_state = None
        if not getattr(method, "text_frozen", False):  # e.g. zero-shot keeps its heads for every row
            ctx.forget_heads()
        # CIL rows stop at the current step: unseen classes are not in the label space yet
        acc.append([evaluate(method, ctx, j) if not settings.class_incremental or j <= task else None
                    for j in range(len(ctx.tasks))])
        task, step, phase = task + 1, 0, "train"
        checkpoint(task, step, phase, {})
    return acc


def lrs_for(order: Sequence[str], default: float, per_task: dict[str, float]) -> list[float]:
    """Per-task learning rates in training order (ZSCL: 5e-5 for Aircraft and MNIST, else 1e-5)."""
    return [float(per_task.get(name, default)) for name in order]
