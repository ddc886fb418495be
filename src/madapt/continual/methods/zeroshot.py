"""Zero-shot CLIP: no training; the reference row of every MTIL table (seed 000 Table 3.2)."""

from __future__ import annotations

from typing import Literal

import torch

from madapt.config import Strict
from madapt.continual.methods.finetune import Finetune
from madapt.registry import register


class ZeroShotConfig(Strict):
    name: Literal["zeroshot"] = "zeroshot"


@register("method", "zeroshot")
class ZeroShot(Finetune):
    """Evaluation only: the engine skips training (``trains``) and keeps text heads (``text_frozen``)."""

    Config = ZeroShotConfig
    trains = False
    text_frozen = True

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return []

    def loss(self, batch, ctx) -> torch.Tensor:
        raise RuntimeError("zero-shot does not train")
