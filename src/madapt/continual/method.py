"""What a continual method is: the `ContinualMethod` protocol the engine calls (DESIGN.md).

A method is a registered class built from its validated pydantic ``Config`` (``Method(cfg)``), so
every option is defined, documented and defaulted in one place. The engine calls, per run::

    setup(ctx)                      once, before theta_0 is snapshotted and before a checkpoint loads
    for each task:
        before_task(ctx)            always on the task-start model (also when resuming mid-task)
        optimizer(...) / schedule(...)
        loss(batch, ctx) ...        ``train.accumulate`` times per step, then after_step(ctx)
        after_task(ctx)
        logits(images, task, ctx)   evaluation of every dataset (one row of the accuracy matrix)

``state_dict()`` / ``load_state_dict()`` hold what the method keeps besides the model weights
(memories, averages, how many experts exist). On resume the method state is restored *before*
the weights, so a method whose modules grow per task rebuilds them in ``load_state_dict`` and the
weights then load strictly; ``load_state_dict`` must therefore be idempotent. What ``before_task``
rebuilds from the task-start model (teachers, cached teacher features) need not be in the state.

Classes may subclass the protocol explicitly to inherit the defaults below (no-op hooks, AdamW
with ZSCL's warmup + cosine, the engine's zero-shot head for logits); nothing else is inherited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from pydantic import Field
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from madapt.config import Strict
from madapt.training import build_optimizer, warmup_cosine

if TYPE_CHECKING:
    from madapt.continual.context import Context


class MethodConfig(Strict):
    """Base of every continual method's Config: its ``name`` (a Literal in the subclass) and a ``label``.

    ``label`` tells two entries of one method apart in a run, as the few-shot recipe's rows do
    (``{name: awof, label: awof_only_c0, weighting: c0}``): the entry's sub-folder and report row.
    """

    name: str
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="sub-folder and report row of this entry (default: its name)",
    )

    @property
    def key(self) -> str:
        return self.label or self.name


class ContinualMethod(Protocol):
    """The engine's view of a continual method; the flags below are read, never probed."""

    Config: ClassVar[type[MethodConfig]]
    trains: ClassVar[bool] = True  # False: evaluation only (zero-shot)
    text_frozen: ClassVar[bool] = (
        False  # True: text tower never changes, evaluation heads are kept across rows
    )
    needs_reference: ClassVar[bool] = False  # True: ctx.reference (images + captions) must be present

    def setup(self, ctx: Context) -> None:
        """Inject modules (LoRA experts, adapters, prompts, routers) into ``ctx.model``."""

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
        """Tensors, or torch param groups (dicts) whose own keys (``lr``, ...) override the defaults."""
        ...

    def optimizer(self, params: list[Any], ctx: Context) -> Optimizer:
        """AdamW with ZSCL's betas, the task's learning rate and the run's weight decay; fused on CUDA."""
        return build_optimizer(
            params,
            "adamw",
            lr=ctx.lr,
            weight_decay=ctx.settings.weight_decay,
            fused=ctx.device.type == "cuda",
        )

    def schedule(self, optimizer: Optimizer, ctx: Context) -> LRScheduler:
        """ZSCL's linear warmup then cosine to 0 over the task's iterations."""
        return warmup_cosine(optimizer, min(ctx.settings.warmup_steps, ctx.iterations), ctx.iterations)

    def before_task(self, ctx: Context) -> None:
        """Prepare the task (teachers, snapshots); sees the task-start model, also on resume."""

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], ctx: Context) -> torch.Tensor: ...

    def after_step(self, ctx: Context) -> None:
        """After each optimizer step; ``ctx.step`` is the index of the step just taken."""

    def after_task(self, ctx: Context) -> None:
        """After the task's last step, before its evaluation row."""

    def logits(self, images: torch.Tensor, task: int | None, ctx: Context) -> torch.Tensor:
        """Logits over ``task``'s classes (all classes when None) with the engine's zero-shot head."""
        return ctx.clip_logits(ctx.model, images, task)

    def uses_pretrained(self, task: int, ctx: Context) -> bool:
        """True when this method predicts ``task`` with the untouched pretrained model (the engine
        then reuses the run's zero-shot accuracy instead of evaluating again)."""
        return False

    def summary(self, ctx: Context) -> dict[str, Any]:
        """Figures the report shows for this method after the run (parameter counts, storage,
        routing accuracy, merge times...): JSON values, one report row each; a value that is a list
        of row dicts (same keys) becomes a table of its own, titled by its key."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; idempotent (see the module docstring)."""
