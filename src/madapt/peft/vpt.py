"""VPT-deep for timm Vision Transformers, adapted to label mapping (seed 000 §6.5.3, Jia et al. 2022).

Learnable prompt tokens are inserted after the prefix (CLS) tokens before the first block and
*replaced* before every later block (KMnP/vpt: ``cat(h[:, :1], P_i, h[:, 1+N:])``). The frozen
pretrained head is kept: the source logits go through a label mapper instead of a new head, which
is the thesis' modification of VPT. Prompt tokens are dropped before the head's pooling so that an
average-pooling head sees only image tokens. Init: uniform ±sqrt(6 / (3·p·p + d)) as VPT.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from madapt.errors import ConfigError


class VPTDeep(nn.Module):
    """Frozen timm ViT + ``num_tokens`` learnable tokens per block; ``forward`` returns source logits."""

    def __init__(self, vit: nn.Module, num_tokens: int) -> None:
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise ConfigError("prompt.kind vpt_deep", f"backbone is a {type(vit).__name__}",
                              "a timm VisionTransformer (ViT) backbone")
        if num_tokens < 0:
            raise ConfigError("prompt.tokens", str(num_tokens), "a number of prompt tokens >= 0")
        self.vit = vit.requires_grad_(False).eval()
        self.num_tokens = int(num_tokens)
        depth, dim = len(vit.blocks), vit.embed_dim
        patch = vit.patch_embed.patch_size[0]
        bound = math.sqrt(6.0 / (3 * patch * patch + dim))
        self.prompts = nn.Parameter(torch.empty(depth, self.num_tokens, dim).uniform_(-bound, bound))

    def train(self, mode: bool = True) -> VPTDeep:
        # The encoder stays in eval mode (VPT): dropout/droppath of the frozen model never fire.
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit, n, k = self.vit, self.num_tokens, self.vit.num_prefix_tokens
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for i, block in enumerate(vit.blocks):
            tokens = self.prompts[i].unsqueeze(0).expand(h.shape[0], -1, -1).to(h.dtype)
            rest = h[:, k:] if i == 0 else h[:, k + n:]
            h = block(torch.cat([h[:, :k], tokens, rest], dim=1))
        h = vit.norm(h)
        return vit.forward_head(torch.cat([h[:, :k], h[:, k + n:]], dim=1))
