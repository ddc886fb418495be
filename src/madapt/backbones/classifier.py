"""Pretrained image classifiers over timm: the source models of visual prompting (seed 000 ch. 6).

OTLM maps the source model's own classes onto the target task, so the source head must be the
real one: ``vit_base_patch16_224.augreg_in21k`` keeps its valid 21,843-way ImageNet-21k head
(the original "jx" in21k weights have a zeroed head and are not offered). Weights load from a
local file through timm's own loader (``pretrained_cfg_overlay=dict(file=...)``, which applies
timm's checkpoint filters); nothing is downloaded. Mean/std come from
`timm.data.resolve_data_config` (0.5/0.5 for the in21k ViT, ImageNet statistics otherwise).

Tiny variants build the same timm classes at small widths so tests run the real code paths.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.models import load_state_dict

from madapt.backbones import existing_weights_file, unreadable
from madapt.errors import UnknownNameError, WeightsError, closest
from madapt.registry import register

# name -> (timm model name with pretrained tag, timm kwargs, input side in pixels or None for timm's)
CLASSIFIERS: dict[str, tuple[str, dict[str, Any], int | None]] = {
    "vit_base_patch16_224.augreg_in21k": ("vit_base_patch16_224.augreg_in21k", {}, None),
    "vit_base_patch16_224.augreg_in1k": ("vit_base_patch16_224.augreg_in1k", {}, None),
    "vit_large_patch16_224": ("vit_large_patch16_224", {}, None),
    "swin_base_patch4_window7_224": ("swin_base_patch4_window7_224", {}, None),
    "resnet50": ("resnet50", {}, None),
    "convnext_base": ("convnext_base", {}, None),
    "madapt-tiny-vit-in21k": (
        "vit_base_patch16_224.augreg_in21k",
        dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 32,
    ),
    "madapt-tiny-vit": (
        "vit_base_patch16_224.augreg_in1k",
        dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 32,
    ),
    "madapt-tiny-swin": (
        "swin_base_patch4_window7_224",
        dict(img_size=32, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4), 32,
    ),
    "madapt-tiny-resnet50": (
        "resnet50", dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8), 32,
    ),
    "madapt-tiny-convnext": ("convnext_base", dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)), 32),
}


@dataclass
class ClassifierBackbone:
    """A timm classifier with the input statistics its weights expect."""

    model: torch.nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    num_classes: int
    data_config: dict[str, Any]


def load_classifier(name: str, weights: str | os.PathLike[str] | None = None,
                    **timm_kwargs: Any) -> ClassifierBackbone:
    """Build classifier ``name`` (a preset above or any timm model name) with local ``weights``.

    ``weights`` is None (random init from the global torch RNG) or a local file (.safetensors,
    or a timm/torchvision state dict readable with ``weights_only=True``). ``timm_kwargs`` go to
    `timm.create_model` after the preset's own (e.g. ``num_classes``, ``img_size``).
    """
    timm_name, preset_kwargs, side = _resolve(name)
    kwargs = {**preset_kwargs, **timm_kwargs}
    if weights is None:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    else:
        file = existing_weights_file(weights, f"weights of classifier {name}")
        model = _create_from_file(timm_name, name, file, kwargs)
    model.eval()

    img_size = kwargs.get("img_size", side)
    overrides = {"input_size": (3, *_pair(img_size))} if img_size is not None else {}
    data_config = resolve_data_config(overrides, model=model)
    return ClassifierBackbone(
        model=model,
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        input_size=tuple(data_config["input_size"]),
        num_classes=int(model.num_classes),
        data_config=data_config,
    )


def _resolve(name: str) -> tuple[str, dict[str, Any], int | None]:
    if name in CLASSIFIERS:
        return CLASSIFIERS[name]
    if timm.is_model(name) and _known_tag(name):
        return name, {}, None
    raise UnknownNameError(
        f"classifier '{name}'",
        "is not a preset or a timm model" + closest(name, [*CLASSIFIERS, *timm.list_models()]),
        f"one of {', '.join(CLASSIFIERS)}, or a timm model name",
    )


def _known_tag(name: str) -> bool:
    base, _, tag = name.partition(".")
    return not tag or name in timm.list_pretrained(base)


def _create_from_file(timm_name: str, name: str, file: Any, kwargs: dict[str, Any]) -> torch.nn.Module:
    where = f"weights of classifier {name}"
    try:
        # the file overlay takes priority over every hub/url source in timm, so this never downloads
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)),
                                 **kwargs)
    except Exception as load_err:  # safetensors, zip, unpickling and key errors share no base class
        try:
            load_state_dict(str(file))  # failure path only: tells an unreadable file from a wrong one
        except Exception as read_err:
            raise unreadable(file, where, read_err) from None
        first = (str(load_err).strip().splitlines() or [type(load_err).__name__])[0][:200]
        raise WeightsError(f"{where} '{file}'", f"do not match the architecture: {first}",
                           f"a checkpoint of {timm_name} with these settings") from None


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Freeze ``model`` in place for prompting: no parameter trains, eval mode (BatchNorm stats fixed)."""
    model.requires_grad_(False)
    model.eval()
    return model


for _name in CLASSIFIERS:
    register("backbone", _name)(functools.partial(load_classifier, _name))
