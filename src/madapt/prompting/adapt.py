"""Few-shot methods of seed 003 on the `FewShotMethod` contract: zero-shot CLIP (Table 1, "ZS CLIP").

Zero-shot CLIP classifies with the frozen model and the dataset's hand template (CoOp's
``ZeroshotCLIP``: ``CUSTOM_TEMPLATES[dataset]``, one prompt per class); ``ensemble: true`` averages
the normalised embeddings of every template instead (CoOp's ``ZeroshotCLIP2`` for ImageNet).
Logits are ``logit_scale.exp() * image @ text`` with the frozen CLIP's own temperature.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from madapt.backbones.clip import zero_shot_head
from madapt.config import Strict
from madapt.prompting.fewshot import FewShotContext, logit_scale
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
