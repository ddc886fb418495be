"""CoCoOp: CoOp's context shifted per image by a meta-net (Zhou et al., CVPR 2022; seed 003 Table 1).

For image x with normalised feature f(x), every context vector becomes v_m + π(f(x)), with the
meta-net π = Linear(E, E/16) → ReLU → Linear(E/16, D) (``trainers/cocoop.py``; E the image
embedding, D the text width: 512 → 32 → 512 on ViT-B/16). Each image thus gets its own class
texts, and its logits are ``logit_scale.exp() * f(x) @ normalise(g(prompts(x))).T``. The prompt
learner (context and meta-net) is the only trained part. On ViT-B/16: 4·512 + 33,312 = 35,360
parameters (seed 003 Table 1).

Deviations from the reference code, kept on purpose: precision follows the backbone (the
reference runs fp16); evaluation encodes the texts of several images in one batch (at most
`TEXT_BATCH` prompts) where the reference loops image by image; the values are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from madapt.prompting.coop import TextPromptLearner, encode_text, resolve_n_ctx
from madapt.prompting.prompt_method import PromptMethod, SGDConfig, layers
from madapt.registry import register

if TYPE_CHECKING:
    from madapt.prompting.fewshot import FewShotContext

TEXT_BATCH = 4096  # prompts per text-encoder call: bounds memory for many classes (ImageNet: 1000 per image)


class CoCoOpConfig(SGDConfig):
    """CoCoOp (``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``).

    recommended (the ``batch_size`` and ``epochs`` defaults): batch size 1, 10 epochs, cosine schedule
    after one warm-up epoch at a constant 1e-5 (the recipe's schedule);
    ``scripts/cocoop/base2new_train.sh`` trains on 16 shots.
    """

    name: Literal["cocoop"] = "cocoop"
    epochs: int = Field(10, ge=1, description="MAX_EPOCH")
    batch_size: int = Field(1, ge=1, description="DATALOADER.TRAIN_X.BATCH_SIZE")
    ctx_init: str | None = Field("a photo of a", description="words the context starts from (CTX_INIT)")
    n_ctx: int = Field(4, ge=1, description="context tokens (N_CTX: 4); with ctx_init, its token count")
    reduction: int = Field(
        16,
        ge=1,
        description="meta-net hidden width = image embedding // reduction "
        "(vis_dim // 16 in trainers/cocoop.py)",
    )


class CoCoOpPrompts(nn.Module):
    """The CoCoOp prompt learner: CoOp's context plus the meta-net."""

    def __init__(self, text: TextPromptLearner, embed_dim: int, ctx_dim: int, reduction: int) -> None:
        super().__init__()
        self.text = text
        hidden = embed_dim // reduction
        self.meta_net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, ctx_dim)
        )


@register("fewshot_method", "cocoop")
class CoCoOp(PromptMethod):
    """Conditional CoOp: image-conditioned context, one set of class texts per image."""

    Config = CoCoOpConfig

    def build(self, ctx: FewShotContext) -> nn.Module:
        cfg, model = self.cfg, ctx.backbone.model
        text = TextPromptLearner(ctx.backbone, ctx.classnames, resolve_n_ctx(ctx.backbone, cfg), cfg.ctx_init)
        width = model.token_embedding.weight.shape[1]
        prompts = CoCoOpPrompts(text, model.visual.output_dim, width, cfg.reduction)
        return prompts.to(model.token_embedding.weight.dtype)

    def text_features_for(self, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised class features per image [B, n_cls, E] for normalised image features [B, E]."""
        learner = self.prompts.text
        bias = self.prompts.meta_net(image_features.to(learner.ctx.dtype))  # (B, D)
        shifted = learner.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, n_ctx, D)
        prompts = torch.cat([learner(c) for c in shifted])  # (B * n_cls, L, D)
        tokens = learner.tokens.repeat(len(shifted), 1)
        feats = encode_text(self.backbone.model, prompts, tokens)
        return F.normalize(feats, dim=-1).reshape(len(shifted), learner.n_cls, -1)

    def text_features(self) -> torch.Tensor:
        """The image-free texts (context without the meta-net shift), for inspection."""
        learner = self.prompts.text
        return F.normalize(encode_text(self.backbone.model, learner(), learner.tokens), dim=-1)

    def logits(self, images: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        img = self.image_features(images)
        chunk = max(1, TEXT_BATCH // self.prompts.text.n_cls)
        out = []
        for start in range(0, len(img), chunk):
            part = img[start : start + chunk]
            texts = self.text_features_for(part)
            out.append(torch.einsum("be,bce->bc", part.to(texts.dtype), texts))
        return self.logit_scale() * torch.cat(out)

    def token_layout(self) -> tuple[list[int], list[int]]:
        model = self.backbone.model
        return [self.prompts.text.n_ctx] + [0] * (layers(model) - 1), [0] * layers(model.visual)
