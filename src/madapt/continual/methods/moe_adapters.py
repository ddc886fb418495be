"""MoE-Adapters (Yu et al. 2024), the mixture-of-adapters baseline of seed 000 Tables 4.1–4.10.

As its code runs it (``mtil/clip/model.py``, ``adapter.py``, ``src/models/finetune.py``,
``scripts/train/train_full_shot_router11_experts22_1000iters.sh``):

- 22 experts beside the FFN of every residual block of both towers, on the post-attention
  residual (`madapt.peft.moe`): Linear(d→64)–ReLU–dropout 0.1–Linear(64→d), × 0.1, down
  Kaiming-uniform, up and biases zero;
- one router and one noise matrix per task (d × 22, both zero-initialised), noisy top-2 gating while
  training (logits + ε · (softplus(x W_noise) + 1e-2)), clean top-2 at test time, routed per sample
  on token 0 (CLS for images, SOT for texts; with a causal text tower every prompt's SOT is the
  same, so the text gates of a task are the same for all its prompts, as in the code);
- trained: every expert not frozen, the task's router and noise matrix; the frozen backbone;
  the cv² balance loss the code computes is never added to its loss, so it is not computed here;
- activate-freeze: the samples each expert received while training a task are counted per
  block and tower; after the task the two most chosen per block and tower are frozen for all later
  tasks (a choice may repeat an already frozen expert, so fewer than 2 per task can be new);
- DDAS picks the router at test time (`madapt.continual.selector`, shared with MM-MoE).

Its per-task learning rates (5e-3, 1e-3, 5e-3, 1e-3, 1e-4, 1e-3, 1e-3, 1e-4, 1e-3, 1e-3, 1e-3 for
Order I) are a preset matter (``train.lr_per_task``). Its CIL code (``cil/clip/model.py``,
``cil/continual_clip/models.py``) is another configuration of the same layer: 2 experts per block,
top-2, one router and noise matrix for every step (``shared_router: true``), no freezing, no task
selection; the ``cil/*_moe_adapters`` presets set it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from madapt.continual.experts import StepCosts, TaskRouting, count_parameters, routed_logits, text_head
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.continual.methods.finetune import ce_loss
from madapt.continual.selector import SelectorConfig
from madapt.peft.moe import ExpertConfig, ExpertLayer, expert_layers, expert_seed, inject_expert_layers
from madapt.registry import register


def _adapter() -> ExpertConfig:
    return ExpertConfig(rank=64, activation="relu", activation_at="hidden", dropout=0.1, scale=0.1, bias=True)


class MoEAdaptersConfig(MethodConfig):
    name: Literal["moe_adapters"] = "moe_adapters"
    expert: ExpertConfig = Field(default_factory=_adapter, description="the code's Adapter (bottleneck 64)")
    experts: int = Field(22, ge=1, description="experts per block and tower (--experts_num 22)")
    top_k: int = Field(2, ge=1, description="--topk 2")
    noisy: bool = Field(True, description="noisy top-k gating while training")
    freeze_per_task: int = Field(2, ge=0, description="most-chosen experts frozen per block after a task")
    shared_router: bool = Field(
        False, description="one router and noise matrix for every task (the CIL code)"
    )
    selector: SelectorConfig | None = Field(default_factory=SelectorConfig, description="DDAS; null: task id")
    lr: float | None = Field(
        None, gt=0.0, description="learning rate of experts and routers (None: the run's per-task lr)"
    )


@register("method", "moe_adapters")
class MoEAdapters(ContinualMethod):
    Config = MoEAdaptersConfig

    def __init__(self, cfg: MoEAdaptersConfig) -> None:
        self.cfg = cfg
        self.frozen: list[list[int]] = []  # per layer (image blocks, then text blocks): frozen experts
        self.routing = TaskRouting(cfg.selector)
        self.trainable_counts: list[int] = []
        self.costs = StepCosts()
        self._model: torch.nn.Module | None = None
        self._heads: dict[tuple[int, int], torch.Tensor] = {}
        self._task = 0

    def setup(self, ctx) -> None:
        """All experts, routers and noise matrices exist from the start, as in the code (11 of each)."""
        self._model = ctx.model
        inject_expert_layers(ctx.model, ["image", "text"], {"image": "first", "text": "first"})
        for layer in self._layers():
            gen = torch.Generator().manual_seed(expert_seed(ctx.settings.seed, 0, layer))
            layer.add_experts(self.cfg.experts, self.cfg.expert, gen)
            for _ in range(1 if self.cfg.shared_router else len(ctx.tasks)):
                layer.add_router("zeros", gen, noisy=self.cfg.noisy)
            layer.top_k = self.cfg.top_k
            layer.counts = torch.zeros(self.cfg.experts, device=ctx.device)
        self.frozen = [[] for _ in self._layers()]

    def _router(self, task: int) -> int:
        return 0 if self.cfg.shared_router else task

    def _layers(self) -> list[ExpertLayer]:
        found = expert_layers(self._model)
        return found["image"] + found["text"]

    def before_task(self, ctx) -> None:
        self._task = ctx.task
        self.costs.start_task()
        self._heads.clear()

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Every expert not frozen, and the current task's router and noise matrix."""
        model.requires_grad_(False)
        params: list[torch.nn.Parameter] = []
        for layer, frozen in zip(self._layers(), self.frozen):
            params += [p for i, e in enumerate(layer.experts) if i not in frozen for p in e.parameters()]
            params += list(layer.routers[self._router(self._task)].parameters())
            params += list(layer.noise[self._router(self._task)].parameters()) if self.cfg.noisy else []
        for p in params:
            p.requires_grad_(True)
        if len(self.trainable_counts) <= self._task:
            self.trainable_counts.append(count_parameters(params))
        return params if self.cfg.lr is None else [{"params": params, "lr": self.cfg.lr}]

    def loss(self, batch, ctx) -> torch.Tensor:
        routing = ctx.model.moe_routing
        routing.image = routing.text = self._router(ctx.task)
        loss = ce_loss(batch, ctx)
        routing.image = routing.text = None
        return loss

    def after_step(self, ctx) -> None:
        self.costs.tick()

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        for layer, frozen in zip(self._layers(), self.frozen):
            top = layer.counts.topk(min(self.cfg.freeze_per_task, len(layer.experts))).indices.tolist()
            frozen.extend(i for i in top if i not in frozen)
            layer.counts.zero_()
        self.routing.fit(ctx)
        self._heads.clear()

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        tasks = [task] if task is not None else list(range(len(ctx.tasks)))
        chosen = self.routing.choose(images, task, ctx, self._router)
        return routed_logits(images, chosen, tasks, ctx, lambda img, t, r: img @ self._head(t, r, ctx).T)

    def _head(self, t: int, r: int, ctx) -> torch.Tensor:
        if (r, t) not in self._heads:
            self._heads[(r, t)] = text_head(ctx, t, r)
        return self._heads[(r, t)]

    def summary(self, ctx) -> dict[str, Any]:
        out: dict[str, Any] = {
            "parameters (total)": sum(p.numel() for p in ctx.model.parameters()),
            "trainable parameters per task": self.trainable_counts,
            **self.costs.report(ctx.device),
            "frozen experts per block (after the last task)": [len(f) for f in self.frozen],
        }
        if self.cfg.selector is not None:
            out["task selection (DDAS)"] = self.routing.report(ctx)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "frozen": [list(f) for f in self.frozen],
            "counts": [layer.counts.clone() for layer in self._layers()],
            "trainable": list(self.trainable_counts),
            "routing": self.routing.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = [[int(i) for i in f] for f in state["frozen"]]
        for layer, counts in zip(self._layers(), state["counts"]):
            layer.counts.copy_(counts)
        self.trainable_counts = [int(c) for c in state.get("trainable", [])]
        self.routing.load(state.get("routing", {}), next(self._model.parameters()).device)
        self._heads.clear()
