"""Few-shot methods of seed 003 on the `FewShotMethod` contract: zero-shot CLIP (Table 1, "ZS CLIP").

Zero-shot CLIP classifies with the frozen model and the dataset's hand template (CoOp's
``ZeroshotCLIP``: ``CUSTOM_TEMPLATES[dataset]``, one prompt per class); ``ensemble: true`` averages
the normalised embeddings of every template instead (CoOp's ``ZeroshotCLIP2`` for ImageNet).
Logits are ``logit_scale.exp() * image @ text`` with the frozen CLIP's own temperature.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from madapt.backbones.clip import zero_shot_head
from madapt.config import Strict
from madapt.peft.kv_prompts import KVPromptBlock, inject_kv_prompts, tower_blocks, uniform_lengths
from madapt.prompting.fewshot import FewShotContext, hand_texts, logit_scale
from madapt.prompting.prompt_method import check_clip
from madapt.prompting.pruning import PruneSchedule, lowest_live, plan_schedule, token_scores
from madapt.registry import register


class ZeroShotConfig(Strict):
    name: Literal["zeroshot"] = "zeroshot"
    ensemble: bool = Field(
        False,
        description="average every template (CoOp ZeroshotCLIP2) instead of the hand "
        "template alone (Table 1 'ZS CLIP')",
    )


@register("fewshot_method", "zeroshot")
class ZeroShot:
    """Frozen CLIP with hand-template class embeddings: nothing trains (``trains = False``)."""

    Config = ZeroShotConfig
    trains = False

    def __init__(self, cfg: ZeroShotConfig) -> None:
        self.cfg = cfg
        self.head: torch.Tensor | None = None

    def check(self, backbone) -> None:
        """The recipe's pre-run check (`PromptMethod.check`): a CLIP backbone."""
        check_clip(backbone)

    def setup(self, ctx: FewShotContext) -> None:
        with torch.no_grad():
            self.head = zero_shot_head(
                ctx.backbone, ctx.classnames, ctx.templates, ensemble=self.cfg.ensemble
            )

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def optimizer(self, params: Any, ctx: FewShotContext) -> torch.optim.Optimizer:
        raise RuntimeError("zero-shot CLIP has nothing to optimise (trains = False)")

    def logits(self, images: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        features = F.normalize(ctx.backbone.encode_image(images).float(), dim=-1)
        return logit_scale(ctx) * features @ self.head.to(features.device).T

    def loss(self, images: torch.Tensor, labels: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        raise RuntimeError("zero-shot CLIP does not train (trains = False)")

    def after_backward(self, ctx: FewShotContext) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        return {"trainable_params": 0}


# ---------------------------------------------------------------------------------------------
# Deep K/V prompts: the fixed-length baseline and Adapt


class KVTrainConfig(Strict):
    """What fixed-length K/V prompts and Adapt share (seed 003 §4.1; Dassl's SGD defaults)."""

    depth: int | None = Field(
        None,
        ge=1,
        description="prompt depth ℓ_f = ℓ_g (§4.2: 12 on ViT-B/16); None = every block of each tower",
    )
    init_std: float = Field(0.02, gt=0, description="N(0, std) init of every prompt (DPL)")
    attend: Literal["gather", "mask"] = Field(
        "gather",
        description="how dead tokens leave attention: gathered out, or -inf columns (Adapt: while pruning)",
    )
    lr: float = Field(2.5e-3, gt=0, description="§4.1: SGD lr 2.5e-3")
    momentum: float = Field(0.9, ge=0, description="Dassl OPTIM.MOMENTUM")
    weight_decay: float = Field(5e-4, ge=0, description="Dassl OPTIM.WEIGHT_DECAY")
    epochs: int = Field(100, ge=1, description="§4.1: 100 epochs")
    batch_size: int = Field(4, ge=1, description="§4.1: batch size 4")


class KVPromptMethod(ABC):
    """Deep prompts appended to the keys/values of every prompted block of both towers (eqs. 7-8).

    The text side encodes the hand template of each class through the prompted text tower (DPL
    feeds the full hand template, so the EOT index never moves); logits are the frozen CLIP's
    ``logit_scale.exp()`` times the cosine similarities (eq. 3); loss cross-entropy (DPL's KL term
    toward zero-shot CLIP is multiplied by 0 there and left out here).
    """

    trains = True

    def __init__(self, cfg: KVTrainConfig) -> None:
        self.cfg = cfg
        self.blocks: dict[str, list[KVPromptBlock]] = {}
        self._text: torch.Tensor | None = None

    @abstractmethod
    def lengths(self, layers: dict[str, int], ctx: FewShotContext) -> dict[str, list[int]]:
        """Tokens each prompted layer starts with, per tower (``layers``: prompted depth per tower)."""

    def check(self, backbone) -> None:
        """The recipe's pre-run check (`PromptMethod.check`): a CLIP backbone."""
        check_clip(backbone)

    def setup(self, ctx: FewShotContext) -> None:
        towers = tower_blocks(ctx.backbone.model)
        layers = {t: min(self.cfg.depth or len(b), len(b)) for t, b in towers.items()}
        self.blocks = inject_kv_prompts(
            ctx.backbone.model, self.lengths(layers, ctx), self.cfg.init_std, self.cfg.attend
        )
        self.tokens = ctx.backbone.tokenize(hand_texts(ctx))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [b.prompts for blocks in self.blocks.values() for b in blocks]

    def optimizer(self, params: Any, ctx: FewShotContext) -> torch.optim.Optimizer:
        c = self.cfg
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def logits(self, images: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        if torch.is_grad_enabled() or self._text is None:
            text = F.normalize(ctx.backbone.encode_text(self.tokens).float(), dim=-1)
            self._text = None if torch.is_grad_enabled() else text  # evaluation reuses the class texts
        text = self._text if self._text is not None else text
        image = F.normalize(ctx.backbone.encode_image(images).float(), dim=-1)
        return logit_scale(ctx) * image @ text.T

    def loss(self, images: torch.Tensor, labels: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        self._text = None
        return F.cross_entropy(self.logits(images, ctx), labels)

    def after_backward(self, ctx: FewShotContext) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "prompts": {t: [b.prompts.detach().clone() for b in bs] for t, bs in self.blocks.items()},
            "masks": {t: [b.mask.clone() for b in bs] for t, bs in self.blocks.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._text = None
        with torch.no_grad():
            for t, blocks in self.blocks.items():
                for b, p, m in zip(blocks, state["prompts"][t], state["masks"][t]):
                    b.prompts.copy_(p)
                    b.mask.copy_(m.bool())

    def summary(self) -> dict[str, Any]:
        lengths = {t: [b.live for b in bs] for t, bs in self.blocks.items()}
        return {
            "trainable_params": sum(b.live * b.width for bs in self.blocks.values() for b in bs),
            "live_tokens": sum(sum(v) for v in lengths.values()),
            "lengths": lengths,
        }


class KVFixedConfig(KVTrainConfig):
    name: Literal["kv_fixed"] = "kv_fixed"
    total_tokens: int = Field(
        32,
        ge=0,
        description="total context length over both towers, spread evenly "
        "(the same budget as Adapt's T_target, eq. 5)",
    )


@register("fewshot_method", "kv_fixed")
class KVFixed(KVPromptMethod):
    """Fixed-length deep K/V prompts: Adapt without pruning at the same total number of tokens."""

    Config = KVFixedConfig

    def lengths(self, layers: dict[str, int], ctx: FewShotContext) -> dict[str, list[int]]:
        return uniform_lengths(self.cfg.total_tokens, layers)


class AdaptConfig(KVTrainConfig):
    name: Literal["adapt"] = "adapt"
    t_target: int = Field(
        32, ge=0, description="T_target, the total live tokens of both towers (eq. 5; Table 1: 32, 128)"
    )
    tokens: int = Field(16, ge=1, description="ξ_f = ξ_g, the maximum context length per layer (§4.2: 16)")
    score: Literal["snip", "grad_norm", "l2"] = Field("snip", description="eq. 6 (Table 3)")
    n_k: int = Field(80, ge=1, description="accumulation period in minibatches (§4.1: 80)")
    r_p: int = Field(4, ge=1, description="tokens pruned per pruning step (§4.1: 4)")
    start_epoch: int = Field(
        1,
        ge=0,
        description="first epoch that accumulates scores: after Dassl's one warm-up "
        "epoch (§4.2: the mask of epoch 1 is the initial one)",
    )
    normalize: Literal["none", "mean"] = Field(
        "none",
        description="per-tower score normalisation before the joint ranking (none = Algorithm 1 as written)",
    )
    short_schedule: Literal["raise_rate", "accept"] = Field(
        "raise_rate",
        description="policy when n_k, r_p cannot reach T_target in the training (madapt.prompting.pruning)",
    )
    reach_by: float = Field(
        0.5,
        gt=0,
        le=1,
        description="raise_rate: reach T_target within this share of the post-warm-up iterations",
    )


@register("fewshot_method", "adapt")
class Adapt(KVPromptMethod):
    """Adapt (seed 003 Algorithm 1): ξ K/V prompts per layer and tower, pruned by saliency to T_target.

    Masks start all ones. From ``start_epoch`` on, while more than T_target tokens are live, every
    minibatch adds eq. 6's score of every token (computed from the gradient of the batch, averaged
    over processes, and the prompts that produced it, before the optimizer step); after ``period``
    minibatches the ``rate`` lowest live tokens of both towers are pruned (never below T_target, so
    the budget is met exactly) and the scores reset. With ``attend: mask`` the dead tokens are -inf
    columns while pruning and are gathered out once T_target is reached. Pruned rows stay in the
    parameter tensors but are out of every forward pass; only live tokens count as trainable.
    """

    Config = AdaptConfig

    def lengths(self, layers: dict[str, int], ctx: FewShotContext) -> dict[str, list[int]]:
        return {t: [self.cfg.tokens] * n for t, n in layers.items()}

    def setup(self, ctx: FewShotContext) -> None:
        super().setup(ctx)
        c = self.cfg
        self.scores = {t: torch.zeros(len(bs), c.tokens, device=ctx.device) for t, bs in self.blocks.items()}
        self.accumulated, self.events = 0, []
        pool = sum(len(bs) for bs in self.blocks.values()) * c.tokens
        self.schedule: PruneSchedule = plan_schedule(
            pool,
            c.t_target,
            c.start_epoch * ctx.steps_per_epoch,
            ctx.total_steps,
            c.n_k,
            c.r_p,
            c.short_schedule,
            c.reach_by,
        )

    def masks(self) -> dict[str, torch.Tensor]:
        return {t: torch.stack([b.mask for b in bs]) for t, bs in self.blocks.items()}

    def live(self) -> int:
        return sum(b.live for bs in self.blocks.values() for b in bs)

    def after_backward(self, ctx: FewShotContext) -> None:
        """Algorithm 1 lines 12-23 for the minibatch whose gradients were just computed."""
        if ctx.step < self.schedule.start_step or self.live() <= self.cfg.t_target:
            return
        for tower, blocks in self.blocks.items():
            for i, b in enumerate(blocks):
                self.scores[tower][i] += token_scores(self.cfg.score, b.prompts, b.prompts.grad).to(
                    self.scores[tower]
                )
        self.accumulated += 1
        if self.accumulated < self.schedule.period:
            return
        k = min(self.schedule.rate, self.live() - self.cfg.t_target)
        removed = lowest_live(self.scores, self.masks(), k, self.cfg.normalize)
        for tower, layer, slot in removed:
            self.blocks[tower][layer].mask[slot] = False
        self.events.append({"step": ctx.step, "removed": [list(r) for r in removed]})
        for s in self.scores.values():
            s.zero_()
        self.accumulated = 0
        self._text = None
        if self.live() <= self.cfg.t_target:
            for b in (b for bs in self.blocks.values() for b in bs):
                b.attend = "gather"  # the budget is reached: dead tokens need no -inf columns any more

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "scores": {t: s.clone() for t, s in self.scores.items()},
            "accumulated": self.accumulated,
            "events": self.events,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for t, s in self.scores.items():
            s.copy_(state["scores"][t])
        self.accumulated, self.events = int(state["accumulated"]), list(state["events"])
        if self.live() <= self.cfg.t_target:
            for b in (b for bs in self.blocks.values() for b in bs):
                b.attend = "gather"

    def summary(self) -> dict[str, Any]:
        masks = {t: m.int().tolist() for t, m in self.masks().items()}
        return {
            **super().summary(),
            "masks": masks,
            "pruning_steps": len(self.events),
            "schedule": self.schedule.as_dict(),
        }
