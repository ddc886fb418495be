"""Zero-shot CLIP: no training; the reference row of every MTIL table (seed 000 Table 3.2)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from madapt.config import Strict
from madapt.registry import register


class ZeroShotConfig(Strict):
    name: Literal["zeroshot"] = "zeroshot"


@register("method", "zeroshot")
class ZeroShot:
    Config = ZeroShotConfig
    trains = False
    text_frozen = True

    def __init__(self, **_: Any) -> None:
        pass

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return []

    def before_task(self, ctx) -> None:
        pass

    def loss(self, batch, ctx) -> torch.Tensor:
        raise RuntimeError("zero-shot does not train")

    def after_task(self, ctx) -> None:
        pass

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        return ctx.clip_logits(ctx.model, images, task)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
