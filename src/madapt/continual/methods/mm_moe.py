"""MM-MoE: multimodal mixture of LoRA experts with dynamic expansion on a frozen CLIP (seed 000 ch. 4).

No public code exists; this follows the text (eqs. 4.4–4.11, Algorithm 2, §4.5) and, where the
text is silent, the MoE-Adapters code the chapter builds on (its DDAS, placement and settings).

- *Experts* (eq. 4.5) sit beside the FFN of every residual block of both towers (`madapt.peft.moe`,
  MoE-Adapters' placement): Eₖ(z) = A f(B z), LoRA-initialised (up projection zero), rank 64,
  no bias. Deviation: eq. 4.5 prints f(A B z); with LoRA's zero-initialised A and ReLU, f'(0) = 0
  and no gradient would ever reach the expert, and MoE-Adapters' "LoRA" experts, which the chapter
  calls LoRA too, put f between the projections (``expert: {activation_at: output, activation:
  gelu}`` runs the printed form).
- *Dynamic expansion* (Algorithm 2, eq. 4.10): each task adds ``experts_per_task`` experts to
  every block of both towers and one router per block that sees all experts so far; only the new
  experts and the new routers train, so the backbone and every earlier expert and router stay
  bit-identical. Routers are softmax(z W) over the top ``top_k`` logits (eq. 4.8, k = 3), routing
  one token per sample: CLS for images, the end-of-text token for texts (MoE-Adapters routes texts on
  SOT, which a causal text tower makes identical for every prompt, so its gates could not depend on
  the text at all). ``expansion: false`` is Table 4.11's ablation: one pool as large as the
  expanded one (tasks × experts_per_task) and one router, all trained by every task.
- *Multimodal router* (eqs. 4.7, 4.9): the text experts of the last text block are gated by
  f_k = z_img W_M^k x_eotᵀ, with z_img the image embedding and x_eot the block's input at the
  end-of-text token, so one class text is refined differently for different images. Placement
  and its reason: anywhere earlier, a text's tokens would have to go through the rest of the tower
  once per (image, class) pair; in the last block only the pooled token reaches the output, so the
  tower runs once per class and the pairs cost O(B·C·K·d) for gates and experts plus ln_final and
  the projection per pair. ``multimodal: false`` is MM-MoE* (a text router there too).
- *Task-adaptive loss* (eq. 4.11): CE with label smoothing over the task's classes (ZSCL's loss)
  + λ Σ_{k ≤ t·n} Ω(E_k), λ = 0.05, the sum running over the experts of *earlier* tasks (eq. 4.11's
  bound). Ω is the L1 norm of expert k's gate activation; we take the gate before top-k selection,
  softmax(f(z))_k (eq. 4.8 over all the router's experts), because after selection the kept gates
  sum to 1 and an L1 term on old experts would have no gradient whenever only old experts are
  selected. The term pulls mass from old experts to new ones, which is what §4.5.5.3 says it is
  for ("ensure that newly added experts receive sufficient training in the early training steps")
  and why k = m struggles to reuse old experts (§4.5.5.2); it is zero on the first task.
- *Task selection* (§4.5.2.1): DDAS on MTIL (`madapt.continual.selector`), the latest router
  without a selector in CIL (``router: shared``: one router per block that grows with the pool
  and trains every task, §4.5.3.1, Algorithm 2 line 5).

Evaluation goes through `logits` (text features depend on the image) with ZSCL's template
ensemble, averaging normalised per-template embeddings of each (image, class) pair.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from madapt.continual.experts import (
    StepCosts,
    TaskRouting,
    count_parameters,
    routed_logits,
    template_mean,
    text_head,
)
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.continual.selector import SelectorConfig
from madapt.peft.moe import (
    ExpertConfig,
    ExpertLayer,
    expert_layers,
    expert_seed,
    inject_expert_layers,
    top_k_gates,
)
from madapt.registry import register


class MMMoEConfig(MethodConfig):
    name: Literal["mm_moe"] = "mm_moe"
    expert: ExpertConfig = Field(default_factory=ExpertConfig, description="LoRA expert (rank 64)")
    experts_per_task: int = Field(2, ge=1, description="m of Algorithm 2 (§4.5.2.1: 2)")
    top_k: int = Field(3, ge=1, description="experts combined per sample (Table 4.12: 3)")
    multimodal: bool = Field(True, description="multimodal text router (False: MM-MoE*)")
    expansion: bool = Field(True, description="add experts and a router per task (False: Table 4.11)")
    sparsity: float = Field(0.05, ge=0.0, description="λ of eq. 4.11")
    router: Literal["per_task", "shared"] = Field(
        "per_task", description="a new router per task, or one router that grows (CIL, §4.5.3.1)"
    )
    selector: SelectorConfig | None = Field(
        default_factory=SelectorConfig,
        description="DDAS task selection (MTIL); null: task id / latest router",
    )
    lr: float | None = Field(
        None, gt=0.0, description="learning rate of experts and routers (None: the run's per-task lr)"
    )


@register("method", "mm_moe")
class MMMoE(ContinualMethod):
    Config = MMMoEConfig

    def __init__(self, cfg: MMMoEConfig) -> None:
        self.cfg = cfg
        self.groups = 0  # expert groups (= routers) built
        self.routing = TaskRouting(cfg.selector)
        self.trainable_counts: list[int] = []
        self.costs = StepCosts()
        self._model: torch.nn.Module | None = None
        self._heads: dict[tuple[int, int], Any] = {}
        self._seed = self._task = 0

    # -- structure --------------------------------------------------------------------------

    def setup(self, ctx) -> None:
        self._model, self._seed = ctx.model, ctx.settings.seed
        self._image_dim = ctx.model.visual.output_dim
        inject_expert_layers(ctx.model, ["image", "text"], {"image": "first", "text": "eot"})
        for layer in self._layers():
            layer.top_k = self.cfg.top_k
        if not self.cfg.expansion:  # one capacity-matched pool and router, built before θ⁰
            self._grow(1, experts=self.cfg.experts_per_task * len(ctx.tasks))

    def _layers(self) -> list[ExpertLayer]:
        found = expert_layers(self._model)
        return found["image"] + found["text"]

    def _multimodal_layer(self) -> ExpertLayer | None:
        return expert_layers(self._model)["text"][-1] if self.cfg.multimodal else None

    def _grow(self, groups: int, experts: int | None = None) -> None:
        """Build expert groups (and their routers) until ``groups`` exist; idempotent."""
        experts = experts or self.cfg.experts_per_task
        mm = self._multimodal_layer()
        while self.groups < groups:
            g = self.groups
            for layer in self._layers():
                gen = torch.Generator().manual_seed(expert_seed(self._seed, g, layer))
                layer.add_experts(experts, self.cfg.expert, gen)
                previous = layer.bilinear[-1] if layer is mm and g else (layer.routers[-1] if g else None)
                if layer is mm:
                    layer.add_bilinear_router(self._image_dim, gen)
                else:
                    layer.add_router("uniform", gen)
                if self.cfg.router == "shared" and previous is not None:  # the grown router keeps its rows
                    with torch.no_grad():
                        new = layer.bilinear[-1] if layer is mm else layer.routers[-1].weight
                        old = previous if layer is mm else previous.weight
                        new[: old.shape[0]].copy_(old)
            self.groups += 1

    def _router_of(self, task: int) -> int:
        return (
            min(task, self.groups - 1)
            if self.cfg.expansion and self.cfg.router == "per_task"
            else self.groups - 1
        )

    # -- training ---------------------------------------------------------------------------

    def before_task(self, ctx) -> None:
        self._task = ctx.task
        self.costs.start_task()
        if self.cfg.expansion:
            self._grow(ctx.task + 1)
        self._heads.clear()

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        model.requires_grad_(False)
        g, m = self.groups - 1, self.cfg.experts_per_task
        params: list[torch.nn.Parameter] = []
        for layer in self._layers():
            experts = layer.experts if not self.cfg.expansion else layer.experts[g * m : (g + 1) * m]
            params += [p for e in experts for p in e.parameters()]
            params += [layer.bilinear[-1]] if len(layer.bilinear) else list(layer.routers[-1].parameters())
        for p in params:
            p.requires_grad_(True)
        if len(self.trainable_counts) <= self._task:
            self.trainable_counts.append(count_parameters(params))
        return params if self.cfg.lr is None else [{"params": params, "lr": self.cfg.lr}]

    def loss(self, batch, ctx) -> torch.Tensor:
        images, labels = batch
        layers = self._layers()
        for layer in layers:
            layer.keep_logits, layer.logits = True, None
        r = self._router_of(ctx.task)
        img, text = self._encode(images, ctx.class_tokens(ctx.task, ensemble=False), r, ctx)
        logits = ctx.settings.logit_scale * self._similarity(img, text, r)
        loss = F.cross_entropy(logits, labels, label_smoothing=ctx.settings.label_smoothing)
        gate_logits = [layer.logits for layer in layers if layer.logits is not None]
        for layer in layers:
            layer.keep_logits, layer.logits = False, None
        old = (self.groups - 1) * self.cfg.experts_per_task if self.cfg.expansion else 0
        if self.cfg.sparsity and gate_logits and old:
            omega = torch.stack([g.softmax(-1)[:, :old].sum(-1).mean() for g in gate_logits]).mean()
            loss = loss + self.cfg.sparsity * omega
        return loss

    def after_step(self, ctx) -> None:
        self.costs.tick()

    def after_task(self, ctx) -> None:
        self.routing.fit(ctx)
        self._heads.clear()

    # -- features ---------------------------------------------------------------------------

    def _encode(self, images: torch.Tensor, tokens: torch.Tensor, r: int, ctx) -> tuple[torch.Tensor, Any]:
        """Image embeddings [B, D] with router r and the texts: [C, D] embeddings, or, with the
        multimodal router, the last block's (input, FFN output) at the end-of-text token."""
        model, routing = ctx.model, ctx.model.moe_routing
        routing.image = routing.text = r
        img = F.normalize(model.encode_image(images).float(), dim=-1)
        mm = self._multimodal_layer()
        if mm is None or r < 0:
            text = model.encode_text(tokens)
        else:
            routing.defer = {mm.index}
            model.encode_text(tokens)
            routing.defer = set()
            text, mm.recorded = mm.recorded, None
        routing.image = routing.text = None
        return img, text

    def _pair_texts(
        self, img: torch.Tensor, recorded: tuple[torch.Tensor, torch.Tensor], r: int
    ) -> torch.Tensor:
        """Eq. 4.7 at the last text block for every (image, text): [B, C, D] unit embeddings."""
        model, mm = self._model, self._multimodal_layer()
        x, base = recorded  # [C, d] input of the block and input + FFN output, at end-of-text
        weight = mm.bilinear[r]  # [E, D, d]
        logits = torch.einsum("bed,cd->bce", torch.einsum("bD,eDd->bed", img.to(weight), weight), x)
        if mm.keep_logits:
            mm.logits = logits.flatten(0, 1)
        gates = top_k_gates(logits, self.cfg.top_k)  # [B, C, E]
        outs = torch.stack([mm.experts[e](x) for e in range(weight.shape[0])])  # [E, C, d]
        y = model.ln_final(base + torch.einsum("bce,ecd->bcd", gates.to(outs), outs))
        proj = model.text_projection
        y = proj(y) if isinstance(proj, torch.nn.Linear) else y @ proj
        return F.normalize(y.float(), dim=-1)

    def _similarity(self, img: torch.Tensor, text: Any, r: int) -> torch.Tensor:
        if isinstance(text, tuple):
            return torch.einsum("bD,bcD->bc", img, self._pair_texts(img, text, r))
        return img @ F.normalize(text.float(), dim=-1).T

    # -- evaluation -------------------------------------------------------------------------

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        tasks = [task] if task is not None else list(range(len(ctx.tasks)))
        chosen = self.routing.choose(images, task, ctx, self._router_of)
        return routed_logits(images, chosen, tasks, ctx, lambda img, t, r: self._head_logits(img, t, r, ctx))

    def _head_logits(self, img: torch.Tensor, t: int, r: int, ctx) -> torch.Tensor:
        key = (r, t)
        n = ctx.tasks[t].n_classes
        mm = self._multimodal_layer()
        if key not in self._heads and (mm is None or r < 0):
            self._heads[key] = text_head(ctx, t, r)
        elif key not in self._heads:
            routing = ctx.model.moe_routing
            routing.text, routing.defer = r, {mm.index}
            ctx.model.encode_text(ctx.class_tokens(t, ensemble=True))
            routing.text, routing.defer = None, set()
            self._heads[key], mm.recorded = mm.recorded, None
        head = self._heads[key]
        if not isinstance(head, tuple):
            return img @ head.T
        chunk = max(1, 2**24 // max(1, head[0].numel()))  # bounds the [b, C·T, d] pair tensor
        sims = []
        for i in range(0, len(img), chunk):
            texts = template_mean(self._pair_texts(img[i : i + chunk], head, r), n)
            sims.append(torch.einsum("bD,bcD->bc", img[i : i + chunk], texts))
        return torch.cat(sims)

    # -- state and report -------------------------------------------------------------------

    def summary(self, ctx) -> dict[str, Any]:
        model = ctx.model
        total = sum(p.numel() for p in model.parameters())
        out: dict[str, Any] = {
            "parameters (total, after the last task)": total,
            "experts per block (after the last task)": len(self._layers()[0].experts),
            "trainable parameters per task": self.trainable_counts,
            **self.costs.report(ctx.device),
        }
        if self.cfg.selector is not None:
            out["task selection (DDAS)"] = self.routing.report(ctx)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "trainable": list(self.trainable_counts),
            "routing": self.routing.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._grow(int(state["groups"]))
        self.trainable_counts = [int(c) for c in state.get("trainable", [])]
        self.routing.load(state.get("routing", {}), next(self._model.parameters()).device)
        self._heads.clear()
