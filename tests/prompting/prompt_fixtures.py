"""Shared pieces of the prompt-baseline tests: backbones, the recipe's FewShotContext, zero-shot logits.

Backbones are open_clip's real classes: the tiny ViT-B/16-shaped config (random init, BPE tokenizer,
context 77), the bundled micro CLIP (word-level tokenizer, context 20) and, for parameter counts
only, ViT-B/16 itself on the meta device (no memory, no weights).
"""

from __future__ import annotations

from typing import Self

import open_clip
import pytest
import torch

from madapt.backbones.clip import ClipBackbone, load_clip, zero_shot_head
from madapt.backbones.micro import load_micro_clip
from madapt.prompting.fewshot import FewShotContext

TINY_NAMES = ["golden_retriever", "tabby cat", "airliner", "sea or lake", "tree frog"]
MICRO_NAMES = ["red circle", "blue square", "green triangle", "yellow star"]
HAND = "a photo of a {}."


def tiny_backbone(seed: int = 0) -> ClipBackbone:
    torch.manual_seed(seed)
    return load_clip("madapt-tiny-ViT-B-16")


def micro_backbone() -> ClipBackbone:
    return load_micro_clip()


def vitb16_meta() -> ClipBackbone:
    """ViT-B/16 with parameters on the meta device: real shapes for closed-form parameter counts."""
    model = open_clip.create_model("ViT-B-16", device="meta")
    return ClipBackbone(
        model=model,
        tokenizer=open_clip.get_tokenizer("ViT-B-16"),
        preprocess_train=None,
        preprocess_val=None,
        image_size=224,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
    )


def make_ctx(backbone: ClipBackbone, classnames: list[str], template: str = HAND) -> FewShotContext:
    backbone.model.requires_grad_(False)
    device = next(backbone.model.parameters()).device
    return FewShotContext(
        backbone=backbone,
        classnames=list(classnames),
        templates=[template],
        device=device,
        epochs=2,
        steps_per_epoch=3,
    )


def images(backbone: ClipBackbone, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g)


def zero_shot_logits(
    backbone: ClipBackbone, x: torch.Tensor, classnames: list[str], template: str = HAND
) -> torch.Tensor:
    """Zero-shot CLIP with one hand template, at the frozen model's own logit scale."""
    with torch.no_grad():
        head = zero_shot_head(backbone, [c.replace("_", " ") for c in classnames], [template], ensemble=False)
        img = backbone.encode_image(x, normalize=True)
        return backbone.model.logit_scale.exp() * img @ head.T


def frozen_state(backbone: ClipBackbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def sgd_step(method, ctx: FewShotContext, x: torch.Tensor, labels: torch.Tensor) -> set[str]:
    """One optimizer step of ``method``; returns the names of backbone parameters that received a gradient."""
    opt = method.optimizer(method.trainable_parameters(), ctx)
    opt.zero_grad()
    method.loss(x, labels, ctx).backward()
    method.after_backward(ctx)
    opt.step()
    return {n for n, p in ctx.backbone.model.named_parameters() if p.grad is not None}


def assert_backbone_unchanged(before: dict[str, torch.Tensor], backbone: ClipBackbone) -> None:
    after = backbone.model.state_dict()
    assert set(before) == set(after)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


class BlockInputs:
    """Records the input of every block of an open_clip `Transformer` (batch-first [N, L, D])."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handles = [block.register_forward_pre_hook(self._keep) for block in transformer.resblocks]

    def _keep(self, module, args) -> None:
        self.inputs.append(args[0].detach().clone())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


BACKBONES = {"tiny": (tiny_backbone, TINY_NAMES), "micro": (micro_backbone, MICRO_NAMES)}


@pytest.fixture(params=sorted(BACKBONES))
def setting(request) -> tuple[ClipBackbone, list[str], FewShotContext]:
    """Each small backbone with its class names and a context over them (assign it in a test module)."""
    load, names = BACKBONES[request.param]
    backbone = load()
    return backbone, names, make_ctx(backbone, names)


def built(method_class, ctx: FewShotContext, **cfg):
    """``method_class(Config(**cfg))`` set up on ``ctx``."""
    method = method_class(method_class.Config(**cfg))
    method.setup(ctx)
    return method
