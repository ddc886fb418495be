"""Few-shot prompt tuning of CLIP on the CoOp protocol (seed 003 §4.1): the method contract and the loop.

A few-shot method (zero-shot CLIP, CoOp, CoCoOp, KgCoOp, VPT-deep, MaPLe, fixed-length K/V prompts,
Adapt) is a class registered under ``fewshot_method`` and built as ``Method(cfg)`` from its own
pydantic ``Config``. It follows `FewShotMethod`; `FewShotContext` is everything it may look at.
The recipe (`madapt.prompting.fewshot_recipe`, ``kind: fewshot``) builds the data and calls `fit`.

`fit` is Dassl's ``TrainerX`` loop as CoOp and the Adapt/DPL code run it:

- epochs over the K-shot training set, a fresh random order per epoch, ``drop_last`` when the set
  holds at least one batch (Dassl ``build_data_loader``), so 16 shots of 10 classes at batch 4 give
  40 iterations per epoch;
- the method's own optimizer, wrapped in Dassl's schedule (`dassl_schedule`): one constant
  warm-up epoch at lr 1e-5, then cosine over ``epochs`` epochs, stepped once per epoch;
- ``method.after_backward`` between backward and the optimizer step (Adapt's saliency scores see
  the gradients of the batch, averaged over processes);
- test (and validation) accuracy of the last model at the end (Dassl ``TEST.FINAL_MODEL =
  last_step``), GFLOPs of one test image, and ``method.summary()``.

Deviations, kept on purpose: the batch order of epoch e is ``numpy.default_rng([seed, e])`` (not
torch's global RNG as in Dassl's RandomSampler) and each item's augmentation is seeded by its place
in the run, so a run killed anywhere resumes to the same prompts; the frozen CLIP stays in eval mode
(CLIP has no dropout or batch norm, so Dassl's ``model.train()`` changes nothing). Checkpoints hold
the method state, optimizer, schedule, grad scaler, RNG and the history, every
``checkpoint_every`` iterations and at the end of every epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from madapt.backbones.clip import ClipBackbone, fill_template
from madapt.config import Strict
from madapt.continual.stream import SeededItems, eval_batches
from madapt.runs import Checkpointer, rng_state, seed_everything, set_rng_state
from madapt.training import Processes

__all__ = [
    "FewShotContext",
    "FewShotMethod",
    "Settings",
    "dassl_schedule",
    "epoch_batches",
    "evaluate",
    "fit",
    "hand_texts",
    "logit_scale",
    "steps_per_epoch",
]


@dataclass
class FewShotContext:
    """What a method sees (the interface shared with the CoOp-family methods).

    ``backbone.model`` is frozen (``requires_grad`` False) before ``setup``; ``templates[0]`` is the
    dataset's hand template (CoOp ``CUSTOM_TEMPLATES``); ``step`` is the 0-based global iteration.
    """

    backbone: ClipBackbone
    classnames: list[str]
    templates: list[str]
    device: torch.device
    epochs: int
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    processes: Processes = field(default_factory=Processes)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class FewShotMethod(Protocol):
    """What the loop calls. No base class is required; zero-shot sets ``trains = False``."""

    Config: type[Strict]
    trains: bool

    def setup(self, ctx: FewShotContext) -> None: ...
    def trainable_parameters(self) -> list[torch.nn.Parameter] | list[dict]: ...
    def optimizer(self, params: Any, ctx: FewShotContext) -> torch.optim.Optimizer: ...
    def logits(self, images: torch.Tensor, ctx: FewShotContext) -> torch.Tensor: ...
    def loss(self, images: torch.Tensor, labels: torch.Tensor, ctx: FewShotContext) -> torch.Tensor: ...
    def after_backward(self, ctx: FewShotContext) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def summary(self) -> dict[str, Any]: ...


def hand_texts(ctx: FewShotContext) -> list[str]:
    """One prompt per class from the hand template ``templates[0]``.

    ("_" in names is already spaced by the data.)
    """
    return [fill_template(ctx.templates[0], name) for name in ctx.classnames]


def logit_scale(ctx: FewShotContext) -> torch.Tensor:
    """The frozen CLIP's temperature ``logit_scale.exp()`` (eq. 3's 1/τ), as a detached scalar."""
    return ctx.backbone.model.logit_scale.detach().exp()


# ---------------------------------------------------------------------------------------------
# Schedule and batches (Dassl)


def dassl_schedule(
    optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5
) -> LambdaLR:
    """Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=epochs)``, one step per epoch.

    Epoch e (0-based) trains with ``warmup_lr`` in every group while ``e < warmup_epochs``, then with
    ``base * (1 + cos(pi * (e - warmup_epochs) / epochs)) / 2`` (``WARMUP_RECOUNT = True``: the cosine
    restarts its count after warm-up but keeps ``T_max = epochs``, so it never reaches 0). Call
    ``step()`` once at the end of each epoch.
    """
    if epochs < 1 or warmup_epochs < 0:
        raise ValueError(f"need epochs >= 1 and warmup_epochs >= 0; got {epochs}, {warmup_epochs}")

    def factor_for(base: float) -> Callable[[int], float]:
        def factor(epoch: int) -> float:
            if epoch < warmup_epochs:
                return warmup_lr / base
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))

        return factor

    return LambdaLR(optimizer, [factor_for(group["lr"]) for group in optimizer.param_groups])


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Iterations per epoch with Dassl's rule: drop the last partial batch when ``n >= batch_size``."""
    return n // batch_size if n >= batch_size else 1


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The index batches of one epoch: a permutation seeded by (seed, epoch), cut with `steps_per_epoch`."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if n < batch_size:
        return [order]
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n // batch_size)]


# ---------------------------------------------------------------------------------------------
# Evaluation and cost


@dataclass
class Settings:
    """The loop's knobs, flattened from the recipe and method configs."""

    epochs: int
    batch_size: int
    seed: int
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    amp: bool = False
    checkpoint_every: int = 200
    eval_batch_size: int = 100
    num_workers: int = 0


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    # fp16 with a grad scaler on GPUs; bf16 on CPUs (no fp16 matmul kernels there)
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


@torch.no_grad()
def evaluate(method: FewShotMethod, ctx: FewShotContext, dataset: Dataset, settings: Settings) -> float:
    """Top-1 accuracy (%) on ``dataset``; sharded over processes, counts summed."""
    ctx.backbone.model.eval()
    correct = total = 0
    for images, labels in eval_batches(
        dataset, settings.eval_batch_size, settings.num_workers, ctx.processes
    ):
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        with _autocast(ctx.device, settings.amp):
            pred = method.logits(images, ctx).float().argmax(dim=-1)
        correct += int((pred == labels).sum())
        total += len(labels)
    correct, total = ctx.processes.sum([correct, total])
    return 100.0 * correct / max(total, 1)


def gflops(method: FewShotMethod, ctx: FewShotContext, images: torch.Tensor) -> dict[str, float]:
    """FLOPs of ``logits`` (torch's counter: a multiply-add is 2 FLOPs) for 1 and 2 test images.

    ``per_image`` = F(2) - F(1), the cost each extra image adds (image tower with its prompts; for
    CoCoOp also its per-image text pass); ``text`` = F(1) - per_image, the per-call cost of the
    class-text side (0 when the text features are fixed, as in zero-shot). Autograd stays on, so
    methods that cache text features for evaluation recompute them here.
    """
    flops = []
    for n in (1, 2):
        counter = FlopCounterMode(display=False)
        with counter, torch.enable_grad():
            method.logits(images[:n].to(ctx.device), ctx)
        flops.append(counter.get_total_flops())
    per_image = flops[1] - flops[0]
    return {"per_image": per_image / 1e9, "text": (flops[0] - per_image) / 1e9}


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Progress:
    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _batches(
    train: Dataset, settings: Settings, procs: Processes, progress: _Progress
) -> Iterator[tuple[int, Any]]:
    """(batch index, (images, labels)) of the current epoch from ``progress.batch`` on, this process's slice.

    Each item's augmentation seed is its place in the run (seed, epoch, position in the global
    batch), so every process count and every resume point sees the same augmented images.
    """
    order = epoch_batches(len(train), settings.batch_size, settings.seed, progress.epoch)
    base = (settings.seed * 1_000_003 + progress.epoch) * 7_919
    todo = range(progress.batch, len(order))
    mine = [
        [(order[b][k], base + b * settings.batch_size + k) for k in procs.shard(len(order[b]))] for b in todo
    ]
    if hasattr(train, "batch") and settings.num_workers == 0:  # in-memory micro arrays: one gather
        yield from zip(todo, (train.batch([i for i, _ in items]) for items in mine))
        return
    loader = DataLoader(SeededItems(train), batch_sampler=mine, num_workers=settings.num_workers)
    yield from zip(todo, loader)


def fit(
    method: FewShotMethod,
    ctx: FewShotContext,
    splits: Any,
    settings: Settings,
    checkpointer: Checkpointer | None = None,
    report: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``splits.train`` (resuming from ``checkpointer``), then evaluate.

    ``splits`` has ``train``, ``val`` and ``test`` datasets of (image, label) items. Returns the run's
    results entry: test/val accuracy, per-epoch history, GFLOPs and ``method.summary()``.
    """
    procs = ctx.processes
    seed_everything(settings.seed)  # prompt initialisation is identical for a fresh and a resumed run
    method.setup(ctx)
    optimizer = scheduler = scaler = None
    params: list[torch.Tensor] = []
    if method.trains:
        optimizer = method.optimizer(method.trainable_parameters(), ctx)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        scheduler = dassl_schedule(optimizer, settings.epochs, settings.warmup_epochs, settings.warmup_lr)
        if settings.amp and ctx.device.type == "cuda":
            scaler = torch.amp.GradScaler("cuda")
    state = _Progress()
    procs.barrier()  # the main process may be replacing the checkpoint a moment earlier
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        s = saved.state
        method.load_state_dict(s["method"])
        if optimizer is not None:
            optimizer.load_state_dict(s["optimizer"])
            scheduler.load_state_dict(s["scheduler"])
            if scaler is not None and s.get("scaler"):
                scaler.load_state_dict(s["scaler"])
        set_rng_state(s["rng"])
        state = _Progress(
            saved.unit["epoch"], saved.unit["batch"], float(s["loss_sum"]), int(s["seen"]), list(s["history"])
        )

    def checkpoint() -> None:
        if checkpointer is None or not procs.is_main:
            return
        checkpointer.save(
            {"epoch": state.epoch, "batch": state.batch},
            {
                "method": method.state_dict(),
                "rng": rng_state(),
                "history": state.history,
                "loss_sum": state.loss_sum,
                "seen": state.seen,
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
        )

    epochs = settings.epochs if method.trains else 0
    ctx.backbone.model.eval()
    while state.epoch < epochs:
        ctx.epoch, began = state.epoch, time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        for b, (images, labels) in _batches(splits.train, settings, procs, state):
            ctx.step = state.epoch * ctx.steps_per_epoch + b
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            with _autocast(ctx.device, settings.amp):
                loss = method.loss(images, labels, ctx)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            procs.mean_grads(params)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if scaler is None or all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
                # an fp16 overflow step is skipped by the scaler: it gives no scores either
                method.after_backward(ctx)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            state.batch, state.loss_sum, state.seen = (
                b + 1,
                state.loss_sum + float(loss.detach()) * len(labels),
                state.seen + len(labels),
            )
            if report is not None:
                report(ctx.step + 1, ctx.total_steps)
            if (ctx.step + 1) % settings.checkpoint_every == 0 and state.batch < ctx.steps_per_epoch:
                checkpoint()
        scheduler.step()
        loss_sum, seen = procs.sum([state.loss_sum, state.seen])
        summary = method.summary()
        state.history.append(
            {
                "epoch": state.epoch + 1,
                "loss": loss_sum / max(seen, 1),
                "lr": lr,
                "seconds": time.perf_counter() - began,
                **{k: summary[k] for k in ("live_tokens", "trainable_params") if k in summary},
            }
        )
        state.epoch, state.batch, state.loss_sum, state.seen = state.epoch + 1, 0, 0.0, 0
        checkpoint()
    ctx.epoch, ctx.step = epochs, ctx.total_steps
    entry: dict[str, Any] = {
        "test": evaluate(method, ctx, splits.test, settings),
        "val": evaluate(method, ctx, splits.val, settings) if len(splits.val) else None,
    }
    probe = next(eval_batches(splits.test, 2, 0))[0]
    entry.update(
        gflops=gflops(method, ctx, probe),
        history=state.history,
        summary=method.summary(),
        epochs=epochs,
        steps_per_epoch=ctx.steps_per_epoch,
        batch_size=settings.batch_size,
    )
    return entry
