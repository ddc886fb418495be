"""Zero-shot CLIP: no training; the reference row of every MTIL table (seed 000 Table 3.2)."""

from __future__ import annotations

from typing import Literal

import torch

from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.registry import register


class ZeroShotConfig(MethodConfig):
    name: Literal["zeroshot"] = "zeroshot"


@register("method", "zeroshot")
class ZeroShot(ContinualMethod):
    """Evaluation only: the engine skips training (``trains``), keeps text heads (``text_frozen``)
    and fills every row from the run's zero-shot accuracies (``uses_pretrained``)."""

    Config = ZeroShotConfig
    trains = False
    text_frozen = True

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return []

    def uses_pretrained(self, task: int, ctx) -> bool:
        return True

    def loss(self, batch, ctx) -> torch.Tensor:
        raise RuntimeError("zero-shot does not train")
