"""Key/value-only deep prompts for open_clip CLIP towers (seed 003 §3.3, eqs. 7-8), PEFT style.

Config -> layer -> injector, as PEFT tuners are built:

- `KVPromptBlock` (the layer) wraps one open_clip ``ResidualAttentionBlock`` and owns its prompts
  P (n, d) and a boolean mask (n,). Self-attention becomes ``Q = f_q(ln_1(x))``,
  ``K = f_k(ln_1([x; P]))``, ``V = f_v(ln_1([x; P]))``: the prompts pass through the block's frozen
  LayerNorm and K/V projection like real tokens (DPL ``ResidualAttentionBlock_TrainerSubnet``), the
  queries, the output length and hence every later block are unchanged. open_clip's own block
  ignores ``k_x``/``v_x`` outside cross-attention, so the wrapper calls the block's frozen
  ``nn.MultiheadAttention`` itself with keys/values longer than the queries.
- In the text tower the causal mask gets zero columns for the prompts: every position, the first
  included, sees them; EOT pooling is untouched because the sequence keeps its 77 (or 20) tokens.
- A pruned token leaves attention, never multiplied by zero (after the LayerNorm a zero vector is
  the LayerNorm bias, a non-zero key and value): ``attend = "gather"`` keeps only the live rows
  (variable length per layer); ``attend = "mask"`` keeps all n rows and gives the dead ones a -inf
  column (fixed shapes, for comparison in the benchmark). A block without live tokens runs the
  original block exactly, so all masks zero is bit-for-bit zero-shot CLIP.
- `inject_kv_prompts` (the injector) wraps the first blocks of each tower; `remove_kv_prompts` puts
  the original blocks back. Widths are read from each block (micro CLIP 128/128, ViT-B/16 768
  vision / 512 text). Init N(0, 0.02) as DPL, layer 0 included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from madapt.errors import ConfigError

Attend = Literal["gather", "mask"]
TOWERS = ("vision", "text")


def tower_blocks(model: nn.Module) -> dict[str, nn.ModuleList]:
    """The transformer blocks of each CLIP tower: ``visual.transformer`` and the text ``transformer``."""
    text = getattr(model, "transformer", None)
    if text is None and hasattr(model, "text"):
        text = getattr(model.text, "transformer", None)  # open_clip CustomTextCLIP
    vision = getattr(getattr(model, "visual", None), "transformer", None)
    if text is None or vision is None or not hasattr(text, "resblocks") or not hasattr(vision, "resblocks"):
        raise ConfigError(
            f"backbone {type(model).__name__}",
            "has no open_clip transformer towers",
            "an open_clip CLIP with a ViT image tower (visual.transformer.resblocks) and a text transformer",
        )
    return {"vision": vision.resblocks, "text": text.resblocks}


class KVPromptBlock(nn.Module):
    """An open_clip ``ResidualAttentionBlock`` with ``n`` prompts appended to its keys and values."""

    def __init__(
        self, block: nn.Module, tokens: int, init_std: float = 0.02, attend: Attend = "gather"
    ) -> None:
        super().__init__()
        if not isinstance(block, ResidualAttentionBlock) or hasattr(block, "ln_1_kv"):
            raise ConfigError(
                f"block {type(block).__name__}",
                "is not an open_clip self-attention ResidualAttentionBlock",
                "open_clip's default block (not the 'custom' block type, not cross-attention)",
            )
        self.block = block
        self.attend = attend
        weight = block.attn.in_proj_weight
        self.prompts = nn.Parameter(
            torch.empty(tokens, weight.shape[1], device=weight.device).normal_(0, init_std)
        )
        self.register_buffer("mask", torch.ones(tokens, dtype=torch.bool, device=weight.device))

    @property
    def live(self) -> int:
        return int(self.mask.sum())

    @property
    def width(self) -> int:
        return self.prompts.shape[1]

    def get_weight_dtype(self) -> torch.dtype:
        """open_clip's ``Transformer.get_cast_dtype`` asks the first block for it."""
        return self.block.get_weight_dtype()

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: torch.Tensor | None = None,
        v_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if k_x is not None or v_x is not None:
            raise ValueError("K/V prompts are for self-attention blocks; this block got k_x/v_x")
        block = self.block
        if self.live == 0:  # plain self-attention, exactly the frozen block
            return block(q_x, attn_mask=attn_mask)
        x = block.ln_1(q_x)
        prompts = self.prompts if self.attend == "mask" else self.prompts[self.mask]
        p = block.ln_1(prompts.to(x.dtype))
        first = block.attn.batch_first
        n_batch, length = (x.shape[0], x.shape[1]) if first else (x.shape[1], x.shape[0])
        if first:
            kv = torch.cat([x, p.unsqueeze(0).expand(n_batch, -1, -1)], dim=1)
        else:
            kv = torch.cat([x, p.unsqueeze(1).expand(-1, n_batch, -1)], dim=0)
        mask = self._extended_mask(attn_mask, length, x)
        out = block.attn(x, kv, kv, need_weights=False, attn_mask=mask)[0]
        x = q_x + block.ls_1(out)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def _extended_mask(
        self, attn_mask: torch.Tensor | None, length: int, x: torch.Tensor
    ) -> torch.Tensor | None:
        """The block's mask with one column per prompt: 0 (visible to every query) or -inf (pruned)."""
        dead = self.attend == "mask" and not bool(self.mask.all())
        if attn_mask is None and not dead:
            return None
        n = self.prompts.shape[0] if self.attend == "mask" else self.live
        columns = torch.zeros(length, n, dtype=x.dtype, device=x.device)
        if dead:
            columns[:, ~self.mask] = float("-inf")
        if attn_mask is None:
            attn_mask = torch.zeros(length, length, dtype=x.dtype, device=x.device)
        elif attn_mask.dtype == torch.bool:  # True = not allowed (torch's convention)
            attn_mask = torch.zeros(attn_mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                attn_mask, float("-inf")
            )
        columns = columns.expand(*attn_mask.shape[:-1], n)
        return torch.cat([attn_mask.to(x.dtype), columns], dim=-1)


def inject_kv_prompts(
    model: nn.Module,
    tokens: dict[str, Sequence[int]],
    init_std: float = 0.02,
    attend: Attend = "gather",
) -> dict[str, list[KVPromptBlock]]:
    """Wrap block ℓ of each tower in ``tokens`` with ``tokens[tower][ℓ]`` prompts (ℓ = 0 is the input side).

    ``tokens["vision"]`` may be shorter than the tower: later blocks stay plain (prompt depth < ℓ).
    Returns the prompted blocks per tower, in depth order. Prompts are drawn from torch's global RNG.
    """
    towers = tower_blocks(model)
    out: dict[str, list[KVPromptBlock]] = {}
    for tower, counts in tokens.items():
        if tower not in towers:
            raise ConfigError(f"K/V prompts tower '{tower}'", "is unknown", "vision or text")
        blocks = towers[tower]
        if len(counts) > len(blocks):
            raise ConfigError(
                f"K/V prompts depth of the {tower} tower",
                f"{len(counts)} layers",
                f"at most the tower's {len(blocks)} blocks",
            )
        if any(isinstance(b, KVPromptBlock) for b in blocks):
            raise ValueError(f"the {tower} tower already holds K/V prompts")
        out[tower] = []
        for i, n in enumerate(counts):
            if n < 0:
                raise ConfigError(f"K/V prompts of {tower} layer {i + 1}", str(n), "a number of tokens >= 0")
            blocks[i] = KVPromptBlock(blocks[i], int(n), init_std, attend)
            out[tower].append(blocks[i])
    return out


def kv_prompt_blocks(model: nn.Module) -> dict[str, list[KVPromptBlock]]:
    """The prompted blocks of each tower (empty lists when nothing is injected)."""
    return {
        t: [b for b in blocks if isinstance(b, KVPromptBlock)] for t, blocks in tower_blocks(model).items()
    }


def remove_kv_prompts(model: nn.Module) -> None:
    """Put the original frozen blocks back (the prompts are dropped)."""
    for blocks in tower_blocks(model).values():
        for i, b in enumerate(blocks):
            if isinstance(b, KVPromptBlock):
                blocks[i] = b.block


def uniform_lengths(total: int, layers: dict[str, int]) -> dict[str, list[int]]:
    """``total`` tokens spread as evenly as possible over every layer of every tower.

    Each of the L = Σ layers gets ⌊total / L⌋; the first ``total mod L`` layers (from the input
    side, alternating towers in ``layers`` order) get one more. The fixed-length K/V baseline at
    the same total context length as Adapt's T_target (seed 003 eq. 5).
    """
    count = sum(layers.values())
    if count == 0 or total < 0:
        raise ConfigError("total_tokens", str(total), "a number >= 0 over at least one prompted layer")
    base, extra = divmod(total, count)
    order = [(t, i) for i in range(max(layers.values())) for t in layers if i < layers[t]]
    bonus = set(order[:extra])
    return {t: [base + ((t, i) in bonus) for i in range(n)] for t, n in layers.items()}
