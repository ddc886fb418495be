"""LoRA on the linear layers of open_clip's residual blocks, as ConDU's code builds it (seed 002).

ConDU's ``clip/model_lora.py``: every ``mlp.c_fc`` and ``mlp.c_proj`` of both towers becomes
y = W x + b + s · x A B with A ∈ R^{in×r}, B ∈ R^{r×out}, both drawn from N(0, 0.01²) and
s = 1/√r (not PEFT's α/r with B = 0: the adapted model differs from CLIP slightly at init, so the
method's θ⁰ is CLIP with its initial LoRA, as in the code). Layers are replaced in place by a
`LoRALinear` that keeps the original ``weight`` / ``bias`` names, so state-dict keys of the base
model do not change; the new keys end in ``lora_A`` / ``lora_B``.

Config / layer / injector in the PEFT style: `LoraConfig`, `LoRALinear`, `inject_lora`.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, Field
from torch import nn


class LoraConfig(BaseModel):
    rank: int = Field(64, ge=1, description="r (ConDU: 64)")
    targets: list[str] = Field(
        ["mlp.c_fc", "mlp.c_proj"],
        description="module name suffixes to adapt (ConDU: the MLP of every block)",
    )
    init_std: float = Field(0.01, ge=0.0, description="std of both A and B at init (ConDU's code)")


class LoRALinear(nn.Linear):
    """``base(x) + x A B / √r``; ``weight`` and ``bias`` are the wrapped layer's own tensors."""

    def __init__(self, base: nn.Linear, rank: int, init_std: float, generator: torch.Generator) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None)
        self.weight = base.weight
        self.bias = base.bias
        dtype, device = base.weight.dtype, base.weight.device
        a = torch.randn(base.in_features, rank, generator=generator) * init_std
        b = torch.randn(rank, base.out_features, generator=generator) * init_std
        self.lora_A = nn.Parameter(a.to(device=device, dtype=dtype))
        self.lora_B = nn.Parameter(b.to(device=device, dtype=dtype))
        self.scaling = 1.0 / math.sqrt(rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.scaling * (x @ self.lora_A @ self.lora_B)


def inject_lora(model: nn.Module, cfg: LoraConfig, seed: int) -> list[str]:
    """Replace the targeted ``nn.Linear`` modules by `LoRALinear`; returns their names.

    The initial A, B come from a generator seeded with ``seed`` in module order, so a resumed run
    (which rebuilds the model and injects again) gets the same θ⁰.
    """
    generator = torch.Generator().manual_seed(seed)
    names = [
        n
        for n, m in model.named_modules()
        if type(m) is nn.Linear and any(n == t or n.endswith("." + t) for t in cfg.targets)
    ]
    if not names:
        raise ValueError(f"no nn.Linear module ends with any of {cfg.targets}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.rank, cfg.init_std, generator))
    return names


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))]
