"""Training utilities every recipe shares: optimizer, warmup + cosine schedule, accelerate setup.

The schedule is ZSCL's `utils.cosine_lr` (reference/cl_clip_anchors.md §2: AdamW, betas
(0.9, 0.999), 100 warmup steps then cosine to 0 over 1000 iterations per task); seed 000 trains
with the same 1000 iterations of batch 64 per task (§3.5.2, §4.5.2.1).

Multi-process training goes through `accelerate`: `accelerator.prepare` wraps the model in DDP and
`accelerator.backward` averages gradients across processes, so every process holds the same
weights after each step. On CPUs, launch with ``accelerate launch --multi_gpu --num_processes N``
(accelerate's torchrun path) and build the accelerator with ``make_accelerator(cpu=True)``, which
then joins a gloo process group; with accelerate 1.15, ``--cpu --num_processes N`` only starts N
processes through ``mpirun`` with a hostfile and otherwise silently runs one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from madapt.errors import ConfigError, UnknownNameError, closest
from madapt.runs import seed_everything

__all__ = [
    "OPTIMIZERS",
    "Processes",
    "build_optimizer",
    "join_processes",
    "make_accelerator",
    "seed_everything",
    "warmup_cosine",
]

OPTIMIZERS = ("adamw", "adam", "sgd")
MIXED_PRECISION = ("no", "bf16")


def build_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    name: str = "adamw",
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    fused: bool = False,
) -> Optimizer:
    """AdamW (ZSCL's default: betas (0.9, 0.999), weight decay 0) or SGD with momentum.

    ``params`` is either tensors (frozen ones, ``requires_grad=False``, are dropped so a method can
    pass ``model.parameters()``) or torch param-group dicts, whose own keys override the defaults.
    ``fused`` selects torch's fused CUDA kernels (same update, one launch per step).
    """
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [p for p in params if p.requires_grad]
    if not groups:
        raise ValueError("build_optimizer got no trainable parameters (all frozen or none given)")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None
        )
    raise UnknownNameError(
        f"optimizer '{name}'",
        "is not a known optimizer" + closest(name, OPTIMIZERS),
        f"one of: {', '.join(OPTIMIZERS)}",
    )


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warmup then cosine decay to 0, exactly ZSCL's `cosine_lr`.

    For step s (0-based; call ``scheduler.step()`` after each ``optimizer.step()``) every group's
    lr is ``base * (s + 1) / warmup`` while ``s < warmup``, then
    ``base * 0.5 * (1 + cos(pi * e / es))`` with ``e = s - warmup`` and ``es = total - warmup``.
    Past ``total_steps`` the lr stays 0 (ZSCL never steps that far; its cosine would rise again).
    Keep the scheduler out of ``accelerator.prepare``: accelerate's wrapper steps it once per
    process, which would run the schedule N times too fast under ``--num_processes N``.
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1; got {warmup_steps}, {total_steps}"
        )
    decay_steps = total_steps - warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay_steps == 0:
            return 0.0
        e = min(step - warmup_steps, decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * e / decay_steps))

    return LambdaLR(optimizer, factor)


def loader_workers(requested: int) -> int:
    """DataLoader workers for ``requested``, capped at the CPUs this process may use: presets ask for
    a GPU server's 4, and more workers than cores only adds processes (and torch's warning). Every
    loader here draws its randomness per item or per batch plan, so the count never changes results."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(requested, usable)


def make_accelerator(mixed_precision: str = "no", cpu: bool = False) -> Accelerator:
    """An `accelerate.Accelerator`; under ``accelerate launch`` it joins the process group.

    Only ``"no"`` and ``"bf16"`` are offered: fp16 needs a GPU loss scaler and the references
    train in fp32 (reference/cl_clip_anchors.md §1, weights cast to fp32).
    """
    if mixed_precision not in MIXED_PRECISION:
        raise ConfigError(
            "mixed_precision",
            f"'{mixed_precision}' is not supported",
            f"one of: {', '.join(MIXED_PRECISION)}",
        )
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


@dataclass(frozen=True)
class Processes:
    """This process's place among those ``accelerate launch`` started (rank 0 of 1 otherwise).

    Recipes that train one model with several processes shard every batch and every evaluation
    set with `shard`, average gradients with `mean_grads` and let only `is_main` write files.
    Gradients are averaged explicitly instead of wrapping the model in DDP so that methods keep
    calling the model's own methods (``encode_image``, ``encode_text``, adapters) unchanged.
    """

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This process's contiguous slice of ``range(n)``; the slices of all processes tile it."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def mean_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Average ``.grad`` over processes in one collective (no-op in a single process).

        Every process must hold grads for the same parameters: the engine runs the same method
        code everywhere, so a parameter untouched by the loss is untouched on every rank.
        """
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (e.g. correct/total counts of sharded evaluation)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def join_processes() -> Processes:
    """Join the process group when started by ``accelerate launch``/torchrun (``WORLD_SIZE`` > 1).

    The group is torch's own process-wide state, so calling this again returns the same answer.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if not (dist.is_available() and dist.is_initialized()):
        make_accelerator(cpu=not torch.cuda.is_available())
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return Processes(dist.get_rank(), dist.get_world_size(), device)
