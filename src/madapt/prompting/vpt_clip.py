"""Deep prompts as real tokens in both CLIP towers: IVLP and VPT-deep (seed 003 Table 1 "VPT").

As in ``clip/model.py`` of muzairkhattak/multimodal-prompt-learning (``ResidualAttentionBlock_IVLP``):

- image tower: layer-0 prompts (n, D_v) are appended after the positional embedding, before
  ``ln_pre``; before each deeper block ℓ < depth the prompt outputs of block ℓ−1 are dropped and
  layer ℓ's own prompts appended. The sequence is 1 + patches + n long and the prompts are
  queries too; the class token is pooled as usual (prompt tokens are left out of the pooling);
- text tower: layer 0 is CoOp's context (n tokens after SOS, from "a photo of a" or random);
  before each deeper block ℓ < depth the n tokens after SOS are overwritten with layer ℓ's
  prompts, so the length and the EOT position never change.

Every prompt is initialised N(0, 0.02) except the text context from words. Registered as
``ivlp`` (``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml``: 2 + 2 tokens, depth 12 in
both towers: 12·2·512 + 12·2·768 = 30,720 parameters on ViT-B/16) and ``vpt`` (``trainers/vpt.py``,
``configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml``: image tower only, 8 tokens, depth 12, fixed
text "a photo of a {}.": 12·8·768 = 73,728, seed 003 Table 1).

Deviations from the reference code, kept on purpose: precision follows the backbone (the
reference hard-codes ``.half()`` on the prompts); a tower with prompts on no layer is allowed
(the reference asserts text depth ≥ 1 for IVLP), so ``vpt`` is this method with the text off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from madapt.backbones.clip import ClipBackbone
from madapt.errors import ConfigError
from madapt.prompting.coop import INIT_STD, TextPromptLearner, encode_text, run_blocks, word_count
from madapt.prompting.prompt_method import PromptMethod, SGDConfig, layers
from madapt.registry import register

if TYPE_CHECKING:
    from madapt.prompting.fewshot import FewShotContext


def encode_image(
    visual: nn.Module, images: torch.Tensor, prompts: Sequence[torch.Tensor | None]
) -> torch.Tensor:
    """open_clip ``VisionTransformer.forward`` with prompt tokens; unnormalised features [B, E].

    ``prompts[ℓ]`` (n, D_v) are layer ℓ's prompt tokens (None: keep the previous layer's outputs).
    With no prompts this is exactly ``visual(images)``.
    """
    weight = visual.conv1.weight
    x = visual.conv1(images.to(weight.device, weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    n_image = x.shape[1]

    def insert(i: int, x: torch.Tensor) -> torch.Tensor:
        prompt = prompts[i] if i < len(prompts) else None
        if prompt is None:
            return x
        return torch.cat([x[:, :n_image], prompt.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)

    x = visual.ln_pre(insert(0, x))  # layer-0 prompts go in before ln_pre, as in the reference
    x = run_blocks(visual.transformer, x, None, lambda i, x: insert(i, x) if i > 0 else x)
    pooled, _ = visual._pool(x[:, :n_image])
    return pooled @ visual.proj if visual.proj is not None else pooled


def text_context(
    backbone: ClipBackbone, classnames: Sequence[str], n_ctx: int, init: str | None
) -> TextPromptLearner:
    """The layer-0 text context of IVLP and MaPLe: the first n_ctx tokens of ``init`` when it has that many
    (their ``ctx_init and n_ctx <= 4``), else N(0, 0.02)."""
    if init and n_ctx > word_count(backbone, init):
        init = None
    return TextPromptLearner(backbone, classnames, n_ctx, init)


def random_prompts(count: int, n: int, width: int) -> nn.ParameterList:
    return nn.ParameterList([nn.Parameter(torch.empty(n, width).normal_(std=INIT_STD)) for _ in range(count)])


def per_layer(n: int, depth: int, tower_layers: int) -> list[int]:
    """Prompt tokens of each block: n on the first ``depth`` blocks."""
    return [n] * depth + [0] * (tower_layers - depth)


def check_depth(field: str, depth: int, tower_layers: int, tower: str) -> None:
    if depth > tower_layers:
        raise ConfigError(
            f"method.{field}",
            f"{depth} prompt layers in the {tower} tower of {tower_layers} blocks",
            f"at most {tower_layers}",
        )


class DeepPromptConfig(SGDConfig):
    """IVLP (``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml``).

    recommended (the ``batch_size`` and ``epochs`` defaults): batch size 4, 5 epochs, cosine schedule
    after one warm-up epoch at a constant 1e-5 (the recipe's schedule).
    """

    name: Literal["ivlp"] = "ivlp"
    n_ctx_text: int = Field(2, ge=0, description="text prompt tokens per layer (N_CTX_TEXT)")
    n_ctx_vision: int = Field(2, ge=0, description="image prompt tokens per layer (N_CTX_VISION)")
    depth_text: int = Field(
        12, ge=0, description="text layers with prompts, from the input (PROMPT_DEPTH_TEXT)"
    )
    depth_vision: int = Field(12, ge=0, description="image layers with prompts (PROMPT_DEPTH_VISION)")
    ctx_init: str | None = Field("a photo of a", description="words of the text and of the layer-0 context")
    lr: float = Field(0.0035, gt=0, description="SGD learning rate (OPTIM.LR)")
    epochs: int = Field(5, ge=1, description="MAX_EPOCH")
    batch_size: int = Field(4, ge=1, description="DATALOADER.TRAIN_X.BATCH_SIZE")

    @model_validator(mode="after")
    def _tokens_and_depth(self) -> DeepPromptConfig:
        for tower in ("text", "vision"):
            n, depth = getattr(self, f"n_ctx_{tower}"), getattr(self, f"depth_{tower}")
            if (n == 0) != (depth == 0):
                raise ValueError(
                    f"n_ctx_{tower} = {n} with depth_{tower} = {depth}: both zero (no {tower} "
                    "prompts) or both positive"
                )
        return self


class VPTConfig(DeepPromptConfig):
    """VPT-deep on CLIP's image tower (``configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml``).

    recommended (the ``batch_size`` and ``epochs`` defaults): batch size 4, 5 epochs, cosine schedule
    after one warm-up epoch at a constant 1e-5 (the recipe's schedule).
    """

    name: Literal["vpt"] = "vpt"
    n_ctx_text: int = Field(
        0, ge=0, description="no text prompts: the text is 'a photo of a {}.' (trainers/vpt.py)"
    )
    depth_text: int = Field(0, ge=0, description="no text prompts")
    n_ctx_vision: int = Field(8, ge=0, description="image prompt tokens per layer (N_CTX_VISION: 8)")
    lr: float = Field(0.0025, gt=0, description="SGD learning rate (OPTIM.LR)")


class DeepPrompts(nn.Module):
    """Text context + deeper text prompts + image prompts of every prompted layer."""

    def __init__(
        self, text: TextPromptLearner, text_deep: nn.ParameterList, vision: nn.ParameterList
    ) -> None:
        super().__init__()
        self.text, self.text_deep, self.vision = text, text_deep, vision

    def vision_prompts(self) -> list[torch.Tensor]:
        return list(self.vision)


@register("fewshot_method", "ivlp")
class IVLP(PromptMethod):
    """Independent vision-language deep prompting: real prompt tokens in both towers, no coupling."""

    Config = DeepPromptConfig

    def check(self, backbone) -> None:
        super().check(backbone)
        check_depth("depth_text", self.cfg.depth_text, layers(backbone.model), "text")
        check_depth("depth_vision", self.cfg.depth_vision, layers(backbone.model.visual), "image")

    def build(self, ctx: FewShotContext) -> nn.Module:
        cfg, model = self.cfg, ctx.backbone.model
        dtype = model.token_embedding.weight.dtype
        text = text_context(ctx.backbone, ctx.classnames, cfg.n_ctx_text, cfg.ctx_init)
        text_deep = random_prompts(
            max(cfg.depth_text - 1, 0), cfg.n_ctx_text, model.token_embedding.weight.shape[1]
        )
        vision = random_prompts(cfg.depth_vision, cfg.n_ctx_vision, model.visual.conv1.out_channels)
        return DeepPrompts(text, text_deep.to(dtype), vision.to(dtype))

    def text_parameters(self) -> list[nn.Parameter]:
        return [*self.prompts.text.parameters(), *self.prompts.text_deep]

    def text_features(self) -> torch.Tensor:
        learner = self.prompts.text
        deep = [None, *self.prompts.text_deep]
        return F.normalize(encode_text(self.backbone.model, learner(), learner.tokens, deep), dim=-1)

    def logits(self, images: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        vision = self.prompts.vision_prompts()
        if vision:
            img = F.normalize(encode_image(self.backbone.model.visual, images, vision), dim=-1)
        else:
            img = self.image_features(images)
        return self.logit_scale() * img @ self.class_features().T

    def token_layout(self) -> tuple[list[int], list[int]]:
        cfg, model = self.cfg, self.backbone.model
        return (
            per_layer(cfg.n_ctx_text, cfg.depth_text, layers(model)),
            per_layer(cfg.n_ctx_vision, cfg.depth_vision, layers(model.visual)),
        )


@register("fewshot_method", "vpt")
class VPT(IVLP):
    """VPT-deep in CLIP's image tower with the fixed text 'a photo of a {}.' (trainers/vpt.py)."""

    Config = VPTConfig
