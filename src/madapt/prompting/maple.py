"""MaPLe: deep text prompts coupled to the image tower by linear maps (Khattak et al., CVPR 2023; seed 003).

As in ``trainers/maple.py`` and ``clip/model.py`` (``ResidualAttentionBlock_MaPLe``) of
muzairkhattak/multimodal-prompt-learning, with depth J (``PROMPT_DEPTH`` 9) and n tokens (``N_CTX`` 2):

- text: layer 0 is CoOp's context (the first n tokens of "a photo of a", the whole phrase kept in
  the text); layers 1..J−1 own prompts P_ℓ (n, D_t), N(0, 0.02), that overwrite the n tokens after
  SOS before block ℓ (the IVLP insertion of `madapt.prompting.vpt_clip`);
- image: no prompts of its own; layer ℓ < J gets F_ℓ(P_ℓ) with F_ℓ = Linear(D_t, D_v) (layer 0:
  F_0 of the context), appended as real tokens as in IVLP. The J−1 deeper maps start as copies of
  one freshly initialised Linear (the reference's ``_get_clones``); F_0 has its own init.

Trainable: J·(D_t·D_v + D_v) + J·n·D_t = 9·(512·768 + 768) + 9·2·512 = 3,555,072 on ViT-B/16
(seed 003 Table 1: 3.56 M).

Deviations from the reference code, kept on purpose: precision follows the backbone (the
reference casts the prompts to fp16); ``n_ctx = 0`` is allowed and gives the untouched CLIP with
the text "a photo of a {}." (the reference has no such case); widths are read from the model
(the reference hard-codes 512 and 768).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import nn

from madapt.prompting.coop import TextPromptLearner
from madapt.prompting.prompt_method import PromptMethod, SGDConfig, layers
from madapt.prompting.vpt_clip import IVLP, check_depth, per_layer, random_prompts, text_context
from madapt.registry import register

if TYPE_CHECKING:
    from madapt.prompting.fewshot import FewShotContext


class MaPLeConfig(SGDConfig):
    """MaPLe (``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``).

    recommended (the ``batch_size`` and ``epochs`` defaults): batch size 4, 5 epochs, cosine schedule
    after one warm-up epoch at a constant 1e-5 (the recipe's schedule).
    """

    name: Literal["maple"] = "maple"
    n_ctx: int = Field(2, ge=0, description="prompt tokens per layer (N_CTX: 2)")
    prompt_depth: int = Field(
        9, ge=1, description="layers with prompts in both towers, from the input (PROMPT_DEPTH: 9)"
    )
    ctx_init: str | None = Field("a photo of a", description="words of the text and of the layer-0 context")
    lr: float = Field(0.0035, gt=0, description="SGD learning rate (OPTIM.LR)")
    epochs: int = Field(5, ge=1, description="MAX_EPOCH")
    batch_size: int = Field(4, ge=1, description="DATALOADER.TRAIN_X.BATCH_SIZE")


class MaPLePrompts(nn.Module):
    """The text context, the deeper text prompts and the text → image maps F_0 .. F_{J−1}."""

    def __init__(self, text: TextPromptLearner, depth: int, text_width: int, vision_width: int) -> None:
        super().__init__()
        self.text = text
        n = text.n_ctx
        self.proj = nn.Linear(text_width, vision_width) if n else None
        self.text_deep = random_prompts(depth - 1 if n else 0, n, text_width)
        single = nn.Linear(text_width, vision_width)
        self.compound_proj = nn.ModuleList([copy.deepcopy(single) for _ in self.text_deep])

    def vision_prompts(self) -> list[torch.Tensor]:
        if self.proj is None:
            return []
        return [self.proj(self.text.ctx)] + [f(p) for f, p in zip(self.compound_proj, self.text_deep)]


@register("fewshot_method", "maple")
class MaPLe(IVLP):
    """Multi-modal prompt learning: image prompts are linear maps of the text prompts, layer by layer.

    The text side and the logits are IVLP's; only the image prompts differ (computed, not owned).
    """

    Config = MaPLeConfig

    def check(self, backbone) -> None:
        PromptMethod.check(self, backbone)
        check_depth("prompt_depth", self.cfg.prompt_depth, layers(backbone.model), "text")
        check_depth("prompt_depth", self.cfg.prompt_depth, layers(backbone.model.visual), "image")

    def build(self, ctx: FewShotContext) -> nn.Module:
        cfg, model = self.cfg, ctx.backbone.model
        text = text_context(ctx.backbone, ctx.classnames, cfg.n_ctx, cfg.ctx_init)
        prompts = MaPLePrompts(
            text, cfg.prompt_depth, model.token_embedding.weight.shape[1], model.visual.conv1.out_channels
        )
        return prompts.to(model.token_embedding.weight.dtype)

    def token_layout(self) -> tuple[list[int], list[int]]:
        model, n = self.backbone.model, self.prompts.text.n_ctx
        depth = self.cfg.prompt_depth if n else 0
        return per_layer(n, depth, layers(model)), per_layer(n, depth, layers(model.visual))
