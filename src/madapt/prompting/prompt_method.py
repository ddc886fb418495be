"""What the prompt baselines share (CoOp, CoCoOp, KgCoOp, MaPLe, IVLP/VPT): optimizer, state, summary.

A method builds its prompt modules as ``self.prompts`` (every parameter trainable) next to the
frozen open_clip `CLIP` of the `FewShotContext`, which it never modifies; the few-shot recipe
(`madapt.prompting.fewshot`) applies the schedule around the optimizer returned here: SGD with
Dassl's momentum and weight decay, as every reference config trains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from madapt.config import Strict
from madapt.errors import ConfigError, RunFolderError
from madapt.training import build_optimizer

if TYPE_CHECKING:
    from madapt.backbones.clip import ClipBackbone
    from madapt.prompting.fewshot import FewShotContext


def check_clip(backbone: ClipBackbone) -> None:
    """The prompt methods run open_clip `CLIP`'s built-in towers; anything else is a config error."""
    model = backbone.model
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask", "visual")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ConfigError(
            "backbone",
            f"{type(model).__name__} has no {missing[0]}",
            "an open_clip CLIP model with its own text transformer (ViT-B-16, the tiny configs, micro-clip)",
        )


class SGDConfig(Strict):
    """Dassl's optimizer as every reference config uses it (``dassl/config/defaults.py``)."""

    lr: float = Field(0.002, gt=0, description="SGD learning rate (OPTIM.LR of the method's config)")
    momentum: float = Field(0.9, ge=0, description="Dassl default OPTIM.MOMENTUM")
    weight_decay: float = Field(5e-4, ge=0, description="Dassl default OPTIM.WEIGHT_DECAY")


class PromptMethod(ABC):
    """Protocol plumbing of the prompt baselines; a subclass builds ``self.prompts`` and the features.

    Subclasses implement ``build(ctx) -> nn.Module`` (every parameter trainable),
    ``text_features() -> [n_cls, E]`` (normalised), ``logits(images, ctx)``, ``text_parameters()``
    (what the text features depend on) and ``token_layout() -> (text, vision)`` prompt tokens per layer.
    """

    Config: ClassVar[type[Strict]]
    trains = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.prompts: nn.Module = nn.Module()
        self._text_cache: tuple[tuple[int, ...], torch.Tensor] | None = None

    @abstractmethod
    def build(self, ctx: FewShotContext) -> nn.Module:
        """The prompt modules for ``ctx.backbone`` and ``ctx.classnames``."""

    @abstractmethod
    def text_features(self) -> torch.Tensor:
        """Normalised class features [n_cls, E] (CoCoOp: of its image-free context)."""

    @abstractmethod
    def logits(self, images: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        """[B, n_cls] with the frozen CLIP's ``logit_scale.exp()``."""

    @abstractmethod
    def token_layout(self) -> tuple[list[int], list[int]]:
        """Prompt tokens per layer of the text and of the image tower."""

    def check(self, backbone: ClipBackbone) -> None:
        """Fail with a `ConfigError` if the options cannot fit ``backbone`` (the recipe calls this
        for every entry before any training, so a bad entry never costs the runs before it)."""
        check_clip(backbone)

    def setup(self, ctx: FewShotContext) -> None:
        self.check(ctx.backbone)
        self.backbone = ctx.backbone
        self.prompts = self.build(ctx).to(ctx.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.prompts.parameters() if p.requires_grad]

    def optimizer(self, params: Any, ctx: FewShotContext) -> torch.optim.Optimizer:
        params = list(params)
        if not params:
            raise ConfigError(
                "method",
                f"{self.cfg.name} with these settings has no trainable prompt parameters",
                "at least one context token",
            )
        return build_optimizer(
            params, "sgd", lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay
        )

    def loss(self, images: torch.Tensor, labels: torch.Tensor, ctx: FewShotContext) -> torch.Tensor:
        logits = self.logits(images, ctx)
        return F.cross_entropy(logits, labels.to(logits.device))

    def after_backward(self, ctx: FewShotContext) -> None:
        return None

    def logit_scale(self) -> torch.Tensor:
        return self.backbone.model.logit_scale.exp().detach()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen, unprompted image features (normalised); no graph, nothing upstream trains."""
        with torch.no_grad():
            return self.backbone.encode_image(images, normalize=True)

    def text_parameters(self) -> list[nn.Parameter]:
        return self.trainable_parameters()

    def class_features(self) -> torch.Tensor:
        """`text_features`, reused while the parameters it depends on are unchanged and no grad is needed.

        Evaluation calls `logits` once per test batch; the text side is the same for all of them.
        ``Tensor._version`` counts in-place updates (optimizer steps, ``copy_`` on load).
        """
        params = self.text_parameters()
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            self._text_cache = None
            return self.text_features()
        key = tuple(p._version for p in params)
        if self._text_cache is None or self._text_cache[0] != key:
            with torch.no_grad():
                self._text_cache = (key, self.text_features())
        return self._text_cache[1]

    def state_dict(self) -> dict[str, Any]:
        return {f"prompts.{k}": v.detach().cpu().clone() for k, v in self.prompts.named_parameters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = dict(self.prompts.named_parameters())
        theirs = {k.removeprefix("prompts."): v for k, v in state.items() if k.startswith("prompts.")}
        wrong = sorted(set(own) ^ set(theirs)) or [k for k in own if theirs[k].shape != own[k].shape]
        if wrong:
            raise RunFolderError(
                "checkpoint",
                f"prompt tensors do not match {self.cfg.name} (e.g. '{wrong[0]}')",
                "a checkpoint written by the same method config",
            )
        self._text_cache = None
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(theirs[name].to(param.device, param.dtype))

    def summary(self) -> dict[str, Any]:
        text, vision = self.token_layout()
        return {
            "trainable_params": sum(p.numel() for p in self.trainable_parameters()),
            "text_tokens_per_layer": text,
            "vision_tokens_per_layer": vision,
        }


def layers(tower: nn.Module) -> int:
    """Blocks of a CLIP tower (the model for the text tower, ``model.visual`` for the image tower)."""
    return len(tower.transformer.resblocks)
