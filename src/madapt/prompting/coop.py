"""CoOp: learnable context vectors before the class name (Zhou et al., IJCV 2022; seed 003 §4.1 baselines).

The prompt of class c is ``[SOS] v_1 ... v_M [CLASS c] . [EOS]``: the M context vectors are
trainable, every other token is the frozen word embedding of CoOp's text
``"<prefix> <class name>."`` (``trainers/coop.py``, ``PromptLearner``). The text feature is read at
the EOT position and projected; logits are ``logit_scale.exp() * image @ text.T`` with both
features L2-normalised, and only the prompt learner is trained.

This module also holds the text side the other prompt baselines (CoCoOp, KgCoOp, MaPLe, IVLP/VPT)
share: `TextPromptLearner` and `encode_text` (open_clip's text tower run from token embeddings, with
deep prompts replacing the tokens after SOS as in MaPLe's ``ResidualAttentionBlock_IVLP``); their
Protocol plumbing is `madapt.prompting.prompt_method`. Everything runs the model's own modules
(``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection``);
the backbone itself is never modified.

Deviations from the reference code, kept on purpose:
- precision follows the backbone (fp32 by default; the reference casts CLIP to fp16);
- init-from-words counts the tokens the backbone's own tokenizer gives (``n_ctx`` is their
  number), where CoOp counts words split on spaces, the same thing for BPE and "a photo of a";
- a prompt that does not fit the text context raises a `ConfigError` (the tokenizers would
  silently truncate the class name), and ``csc`` with ``ctx_init`` is refused (CoOp silently
  ignores ``csc`` when initialising from words).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from pydantic import Field, model_validator
from torch import nn

from madapt.errors import ConfigError
from madapt.prompting.prompt_method import PromptMethod, SGDConfig, layers
from madapt.registry import register

if TYPE_CHECKING:
    from madapt.backbones.clip import ClipBackbone
    from madapt.prompting.fewshot import FewShotContext

INIT_STD = 0.02  # every reference initialises random prompts N(0, 0.02)
Position = Literal["end", "middle", "front"]


# ---------------------------------------------------------------------------------------------
# Tokens and the text tower


def token_ids(backbone: ClipBackbone, texts: Sequence[str], field: str) -> torch.Tensor:
    """Token ids [n, L] on the CPU (L = the model's text context); a text that does not fit is an error.

    The tokenizers truncate silently, which would cut class names off the prompt, so the texts are
    tokenized with a longer context and the EOT position (the largest id) is checked.
    """
    length = backbone.model.positional_embedding.shape[0]
    ids = backbone.tokenizer(list(texts), context_length=length + 64)
    eot = ids.argmax(dim=-1)
    if (eot >= length).any():
        worst = int(eot.argmax())
        raise ConfigError(
            field,
            f"the prompt '{texts[worst]}' takes {int(eot[worst]) + 1} tokens",
            f"prompts within the text context of {length} tokens (fewer context tokens)",
        )
    return ids[:, :length]


def word_count(backbone: ClipBackbone, text: str) -> int:
    """Number of tokens the backbone's tokenizer gives ``text`` (between SOS and EOS), "_" read as a space."""
    return int(token_ids(backbone, [text.replace("_", " ")], "method.ctx_init")[0].argmax()) - 1


def run_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    before: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x`` [N, L, D] through an open_clip `Transformer`'s blocks; ``before(i, x)`` edits block i's input."""
    for i, block in enumerate(transformer.resblocks):
        if before is not None:
            x = before(i, x)
        if getattr(transformer, "batch_first", True):
            x = block(x, attn_mask=attn_mask)
        else:  # older open_clip: blocks take LND
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


def encode_text(
    model: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor, deep: Sequence[torch.Tensor | None] = ()
) -> torch.Tensor:
    """open_clip ``CLIP.encode_text`` from token embeddings [N, L, D] (unnormalised features [N, E]).

    ``deep[i]`` (n, D), when given, replaces the n tokens after SOS before block i: the deep text
    prompts of IVLP and MaPLe, real tokens that later positions attend to under the causal mask.
    Pooling stays at the EOT position of ``tokens``, which the prompts never move.
    """
    cast = model.transformer.get_cast_dtype()
    x = embeddings.to(cast) + model.positional_embedding.to(cast)

    def insert(i: int, x: torch.Tensor) -> torch.Tensor:
        prompt = deep[i] if i < len(deep) else None
        if prompt is None:
            return x
        n = prompt.shape[0]
        return torch.cat([x[:, :1], prompt.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)

    x = run_blocks(model.transformer, x, model.attn_mask, insert)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


class TextPromptLearner(nn.Module):
    """CoOp's prompt learner: n_ctx trainable vectors after SOS, frozen word embeddings elsewhere.

    ``init`` (e.g. "a photo of a") starts the context from the embeddings of its first ``n_ctx``
    tokens and keeps the whole phrase in the text, so with ``n_ctx`` equal to its token count the
    untrained prompt is exactly the hand prompt "a photo of a {}." (MaPLe and IVLP use the first
    2 of its 4 tokens). Without ``init`` the context is N(0, 0.02) behind placeholder words "X".
    ``csc``: one context per class (CoOp's class-specific context). ``position``: where the class
    tokens go (end, middle: between the two halves of the context, front).
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        classnames: Sequence[str],
        n_ctx: int,
        init: str | None = None,
        position: Position = "end",
        csc: bool = False,
    ) -> None:
        super().__init__()
        model = backbone.model
        embed = model.token_embedding
        dtype, device = embed.weight.dtype, embed.weight.device
        names = [name.replace("_", " ") for name in classnames]
        init = init.replace("_", " ") if init else None  # CoOp accepts CTX_INIT "a_photo_of_a"
        if init:
            available = word_count(backbone, init)
            if n_ctx > available:
                raise ConfigError(
                    "method.n_ctx",
                    f"{n_ctx} context tokens from '{init}' ({available} tokens)",
                    f"at most {available}, or no ctx_init (random context)",
                )
            prefix = init
            ids = token_ids(backbone, [init], "method.ctx_init")[0, 1 : 1 + n_ctx].to(device)
            with torch.no_grad():
                ctx = embed(ids).to(dtype)
        else:
            prefix = " ".join(["X"] * n_ctx)
            shape = (len(names), n_ctx, embed.weight.shape[1]) if csc else (n_ctx, embed.weight.shape[1])
            ctx = torch.empty(shape, dtype=dtype, device=device).normal_(std=INIT_STD)
        self.ctx = nn.Parameter(ctx) if n_ctx > 0 else None

        texts = [f"{prefix} {name}.".strip() for name in names]
        tokens = token_ids(backbone, texts, "method.n_ctx")
        with torch.no_grad():
            embedded = embed(tokens.to(device)).to(dtype)
        # the fixed parts are buffers (CoOp's token_prefix / token_suffix): derived from the class
        # names, so checkpoints leave them out and a run rebuilds them
        self.register_buffer("token_prefix", embedded[:, :1], persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx :], persistent=False)
        self.register_buffer("tokens", tokens.to(device), persistent=False)
        self.n_ctx, self.position = n_ctx, position
        self.name_lens = [word_count(backbone, name) for name in names] if position != "end" else []

    @property
    def n_cls(self) -> int:
        return self.tokens.shape[0]

    def forward(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings [n_cls, L, D] for ``ctx`` ((n_ctx, D) or (n_cls, n_ctx, D); default: own)."""
        ctx = self.ctx if ctx is None else ctx
        if ctx is None:
            return torch.cat([self.token_prefix, self.token_suffix], dim=1)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        if self.position == "end":
            return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        half = self.n_ctx // 2
        rows = []
        for i, n in enumerate(self.name_lens):
            name, rest = self.token_suffix[i : i + 1, :n], self.token_suffix[i : i + 1, n:]
            if self.position == "middle":
                parts = [
                    self.token_prefix[i : i + 1],
                    ctx[i : i + 1, :half],
                    name,
                    ctx[i : i + 1, half:],
                    rest,
                ]
            else:
                parts = [self.token_prefix[i : i + 1], name, ctx[i : i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)


def resolve_n_ctx(backbone: ClipBackbone, cfg: Any) -> int:
    """CoOp's rule: with ``ctx_init`` the context is all of its tokens (another explicit n_ctx: error)."""
    if not cfg.ctx_init:
        return cfg.n_ctx
    available = word_count(backbone, cfg.ctx_init)
    if "n_ctx" in cfg.model_fields_set and cfg.n_ctx != available:
        raise ConfigError(
            "method.n_ctx",
            f"{cfg.n_ctx} with ctx_init '{cfg.ctx_init}' ({available} tokens)",
            f"{available} (the context length comes from ctx_init), or leave n_ctx out",
        )
    return available


# ---------------------------------------------------------------------------------------------
# CoOp


class CoOpConfig(SGDConfig):
    """CoOp (``configs/trainers/CoOp/vit_b16.yaml``; ``scripts/coop/main.sh`` M=16, end, generic).

    recommended (``COOP.md`` and the CoOp paper; the ``batch_size``/``epochs`` defaults are for 16
    shots): batch size 32; 200 epochs for 16 and 8 shots, 100 for 4 and 2, 50 for 1 shot; ImageNet
    50 epochs at every shot count (``vit_b16_ep50``); cosine schedule after one warm-up epoch at a
    constant 1e-5 (the recipe's schedule).
    """

    name: Literal["coop"] = "coop"
    epochs: int = Field(
        200,
        ge=1,
        description="MAX_EPOCH of 16 (and 8) shots: vit_b16.yaml; ImageNet and 1 shot: 50, 2-4 shots: 100",
    )
    batch_size: int = Field(32, ge=1, description="DATALOADER.TRAIN_X.BATCH_SIZE")
    n_ctx: int = Field(16, ge=0, description="context tokens M (CoOp: 16); with ctx_init, its token count")
    ctx_init: str | None = Field(
        None,
        description="words the context starts from ('a photo of a' in the ctxv1 configs); None: N(0, 0.02)",
    )
    class_token_position: Position = Field("end", description="CLASS_TOKEN_POSITION: end, middle or front")
    csc: bool = Field(False, description="class-specific context (one per class), random init only")

    @model_validator(mode="after")
    def _csc_random(self) -> CoOpConfig:
        if self.csc and self.ctx_init:
            raise ValueError("csc needs a random context (ctx_init: null); CoOp ignores csc with ctx_init")
        return self


@register("fewshot_method", "coop")
class CoOp(PromptMethod):
    """CoOp: a shared (or class-specific) learned context, frozen CLIP (trainers/coop.py)."""

    Config = CoOpConfig

    def build(self, ctx: FewShotContext) -> nn.Module:
        cfg = self.cfg
        return TextPromptLearner(
            ctx.backbone,
            ctx.classnames,
            resolve_n_ctx(ctx.backbone, cfg),
            cfg.ctx_init,
            cfg.class_token_position,
            cfg.csc,
        )

    def learner(self) -> TextPromptLearner:
        return self.prompts

    def text_features(self) -> torch.Tensor:
        learner = self.learner()
        return F.normalize(encode_text(self.backbone.model, learner(), learner.tokens), dim=-1)

    def logits(self, images: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        return self.logit_scale() * self.image_features(images) @ self.class_features().T

    def token_layout(self) -> tuple[list[int], list[int]]:
        model = self.backbone.model
        text = [self.learner().n_ctx] + [0] * (layers(model) - 1)
        return text, [0] * layers(model.visual)
