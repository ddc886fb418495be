"""VPT-deep for timm Vision and Swin Transformers, adapted to label mapping (seed 000 §6.5.3, Table 6.8).

VPT-deep (Jia et al. 2022, KMnP/vpt) gives every transformer block its own ``num_tokens``
learnable prompt tokens; the frozen encoder is unchanged. The thesis keeps the frozen pretrained
head and puts a label mapper (FLM / ILM / OTLM) on the source logits instead of VPT's new head
(§6.5.3), so ``forward`` returns *source* logits. Prompt tokens are dropped before the head's
pooling, so an average-pooling head sees only image tokens. Init, as VPT: uniform
±sqrt(6 / (3·p·p + d)) with p the patch side and d the stem width.

- `VPTDeep` (timm ``VisionTransformer``): the tokens are inserted after the prefix (CLS) tokens
  before the first block and *replaced* before every later block
  (KMnP/vpt: ``cat(h[:, :1], P_i, h[:, 1+N:])``).
- `VPTDeepSwin` (timm ``SwinTransformer``, the thesis' Swin-B IN-22K, Table 6.8): VPT's
  ``PromptedSwinTransformer``. Each block's tokens are prepended to the tokens of *every*
  attention window; the relative position bias covers only the image tokens (prompts get zero
  bias) and the shifted-window mask is widened with zeros, so every window token sees the prompts
  while windows stay separate. Patch merging sees only image tokens, the next stage's blocks get
  new prompts of that stage's width. (KMnP/vpt's Swin also averages the last block's prompt
  outputs into the pooled feature; here the frozen head pools image tokens only, as pretrained.)
- `build_vpt_deep` picks one of the two for a backbone: the recipe's single entry point.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
    window_partition,
    window_reverse,
)
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from madapt.errors import ConfigError

SUPPORTED = "a timm VisionTransformer (ViT) or SwinTransformer (Swin) backbone"


def supports_vpt_deep(model: nn.Module) -> bool:
    """Whether `build_vpt_deep` can prompt ``model`` (checked by the recipe before any run starts)."""
    return isinstance(model, (VisionTransformer, SwinTransformer))


def build_vpt_deep(model: nn.Module, num_tokens: int) -> VPTDeep | VPTDeepSwin:
    """VPT-deep around a frozen timm ViT or Swin ``model`` with ``num_tokens`` tokens per block."""
    if isinstance(model, VisionTransformer):
        return VPTDeep(model, num_tokens)
    if isinstance(model, SwinTransformer):
        return VPTDeepSwin(model, num_tokens)
    raise ConfigError("prompt.kind vpt_deep", f"backbone is a {type(model).__name__}", SUPPORTED)


def _check_tokens(num_tokens: int) -> int:
    if num_tokens < 0:
        raise ConfigError("prompt.tokens", str(num_tokens), "a number of prompt tokens >= 0")
    return int(num_tokens)


def _vpt_bound(patch_size: tuple[int, int], width: int) -> float:
    # VPT's Xavier-style range, computed once from the stem (also for Swin's wider later stages)
    return math.sqrt(6.0 / (3 * patch_size[0] * patch_size[1] + width))


class VPTDeep(nn.Module):
    """Frozen timm ViT + ``num_tokens`` learnable tokens per block; ``forward`` returns source logits."""

    def __init__(self, vit: nn.Module, num_tokens: int) -> None:
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise ConfigError(
                "prompt.kind vpt_deep",
                f"backbone is a {type(vit).__name__}",
                "a timm VisionTransformer (ViT) backbone",
            )
        self.vit = vit.requires_grad_(False).eval()
        self.num_tokens = _check_tokens(num_tokens)
        depth, dim = len(vit.blocks), vit.embed_dim
        bound = _vpt_bound(tuple(vit.patch_embed.patch_size), dim)
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
            rest = h[:, k:] if i == 0 else h[:, k + n :]
            h = block(torch.cat([h[:, :k], tokens, rest], dim=1))
        h = vit.norm(h)
        return vit.forward_head(torch.cat([h[:, :k], h[:, k + n :]], dim=1))


class VPTDeepSwin(nn.Module):
    """Frozen timm Swin Transformer + ``num_tokens`` learnable tokens per block (VPT-deep, §6.5.3).

    ``prompts[s]`` holds the tokens of stage ``s``: shape (blocks in stage s, num_tokens, width of
    stage s). The frozen modules are called sublayer by sublayer (`prompted_swin_block`), so the
    pretrained weights, masks and relative position tables are timm's own.
    """

    def __init__(self, swin: nn.Module, num_tokens: int) -> None:
        super().__init__()
        if not isinstance(swin, SwinTransformer):
            raise ConfigError(
                "prompt.kind vpt_deep",
                f"backbone is a {type(swin).__name__}",
                "a timm SwinTransformer backbone",
            )
        self.swin = swin.requires_grad_(False).eval()
        self.num_tokens = _check_tokens(num_tokens)
        ref = next(swin.parameters())
        bound = _vpt_bound(tuple(swin.patch_embed.patch_size), swin.embed_dim)
        self.prompts = nn.ParameterList(
            [
                nn.Parameter(
                    torch.empty(
                        len(stage.blocks),
                        self.num_tokens,
                        info["num_chs"],
                        device=ref.device,
                        dtype=ref.dtype,
                    ).uniform_(-bound, bound)
                )
                for stage, info in zip(swin.layers, swin.feature_info)
            ]
        )

    def train(self, mode: bool = True) -> VPTDeepSwin:
        # As VPT: the frozen encoder stays in eval mode, so droppath/dropout never fire.
        super().train(mode)
        self.swin.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        swin = self.swin
        h = swin.patch_embed(x)  # (B, H, W, C): image tokens only, prompts live beside them
        for stage, prompts in zip(swin.layers, self.prompts):
            # Patch merging (timm merges at the start of a stage) only ever sees image tokens; VPT
            # merges its old prompts too but the next block replaces them, so they never matter.
            h = stage.downsample(h)
            for block, tokens in zip(stage.blocks, prompts):
                h = prompted_swin_block(block, h, tokens)
        # Prompt tokens are not pooled: the frozen head averages image tokens only, as it was trained.
        return swin.forward_head(swin.norm(h))


def prompted_swin_block(block: SwinTransformerBlock, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """timm ``SwinTransformerBlock.forward`` with ``prompts`` (N, C) prepended to every window.

    ``x`` is (B, H, W, C). Only the attention changes; the MLP is token-wise, so the block returns
    the image tokens and the prompts are discarded (VPT-deep replaces them before the next block).
    """
    tokens = block.norm1(prompts.to(x.dtype))  # VPT normalises prompts and image tokens together
    x = x + block.drop_path1(_prompted_shifted_attention(block, block.norm1(x), tokens))
    return x + block.drop_path2(block.mlp(block.norm2(x)))


def _prompted_shifted_attention(
    block: SwinTransformerBlock, x: torch.Tensor, prompts: torch.Tensor
) -> torch.Tensor:
    """``SwinTransformerBlock._attn`` (cyclic shift, pad, windows, reverse) around prompted attention."""
    _, height, width, channels = x.shape
    shift = tuple(block.shift_size)
    shifted = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if any(shift) else x
    win_h, win_w = block.window_size
    shifted = F.pad(shifted, (0, 0, 0, (win_w - width % win_w) % win_w, 0, (win_h - height % win_h) % win_h))
    padded_h, padded_w = shifted.shape[1], shifted.shape[2]
    windows = window_partition(shifted, block.window_size).view(-1, win_h * win_w, channels)
    mask = block.get_attn_mask(shifted) if getattr(block, "dynamic_mask", False) else block.attn_mask
    out = prompted_window_attention(block.attn, windows, prompts, mask)
    out = window_reverse(out.view(-1, win_h, win_w, channels), block.window_size, padded_h, padded_w)
    out = out[:, :height, :width]
    return torch.roll(out, shifts=shift, dims=(1, 2)) if any(shift) else out


def prompted_window_attention(
    attn: WindowAttention, windows: torch.Tensor, prompts: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Window attention of timm's ``attn`` over [prompts; window tokens] for the window tokens.

    ``windows``: (B·nW, L, C), image batch-major as `window_partition` orders them; ``prompts``:
    (N, C), already normalised; ``mask``: timm's (nW, L, L) shifted-window mask or None. The
    relative position bias and the mask apply to the image part; the prompt columns get 0 (no
    position, visible from every token of every window), as in VPT's ``PromptedWindowAttention``.
    Only the window tokens' outputs are computed: the prompts' own outputs are never used by
    VPT-deep (replaced before the next block, dropped before merging and pooling), so their
    queries would be wasted work; as keys and values they are attended to exactly as in VPT.
    """
    batch_windows, length, _ = windows.shape
    heads, n = attn.num_heads, prompts.shape[0]
    head_dim = attn.qkv.out_features // (3 * heads)  # explicit: N = 0 prompts leave nothing to infer from
    qkv = attn.qkv(windows).reshape(batch_windows, length, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B·nW, heads, L, d)
    # one projection of the prompts serves every window and image: they are the same parameters
    _, pk, pv = attn.qkv(prompts).reshape(n, 3, heads, head_dim).permute(1, 2, 0, 3).unbind(0)  # heads,N,d
    n_windows = 1 if mask is None else mask.shape[0]
    images = batch_windows // n_windows

    def per_window(t: torch.Tensor) -> torch.Tensor:  # (B·nW, heads, L, d) -> (B, nW, heads, L, d)
        return t.view(images, n_windows, heads, t.shape[-2], t.shape[-1])

    k = torch.cat([pk.expand(images, n_windows, -1, -1, -1), per_window(k)], dim=-2)
    v = torch.cat([pv.expand(images, n_windows, -1, -1, -1), per_window(v)], dim=-2)
    # timm's own (private, timm 1.0.x) table lookup: the bias of the image part, nothing re-derived
    bias = attn._get_rel_pos_bias().view(1, 1, heads, length, length)
    if mask is not None:
        bias = bias + mask.view(1, n_windows, 1, length, length)
    bias = torch.cat([bias.new_zeros(*bias.shape[:-1], n), bias], dim=-1).to(q.dtype)
    out = F.scaled_dot_product_attention(
        per_window(q),
        k,
        v,
        attn_mask=bias,
        scale=attn.scale,
        dropout_p=attn.attn_drop.p if attn.training else 0.0,
    )
    out = out.reshape(batch_windows, heads, length, -1).transpose(1, 2).reshape(batch_windows, length, -1)
    return attn.proj_drop(attn.proj(out))
