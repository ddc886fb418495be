"""Pretrained image classifiers over timm: the source models of visual prompting (seed 000 ch. 6).

OTLM maps the source model's own classes onto the target task, so the source head must be the
real one: ``vit_base_patch16_224.augreg_in21k`` keeps its valid 21,843-way ImageNet-21k head
(the original "jx" in21k weights have a zeroed head and are not offered), and
``swin_base_patch4_window7_224.ms_in22k`` its 21,841-way head (Swin-B IN-22K, the VPT source model
of Table 6.8). Weights load from a local file through timm's own loader
(``pretrained_cfg_overlay=dict(file=...)``, which applies timm's checkpoint filters); nothing is
downloaded. Mean/std come from `timm.data.resolve_data_config` (0.5/0.5 for the in21k ViT,
ImageNet statistics otherwise).

The checkpoint's head is never dropped silently: timm's loader discards it (and loads the rest
non-strictly) whenever ``num_classes`` differs from the pretrained config, which would leave a
label-mapping run on a random head. Here a head of another size is a `WeightsError` naming both
sizes, unless the caller asks for ``new_head=True`` (then one logged line says it is new).

Tiny variants build the same timm classes at small widths so tests run the real code paths.
``micro-source`` is the bundled micro source classifier of the offline VP benchmark (a timm ResNet
at 32 px over the 116 classes of `madapt.data.vp.SOURCE_CLASSES`, made by
``scripts/pretrain_micro_source.py``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
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
    "swin_base_patch4_window7_224.ms_in22k": ("swin_base_patch4_window7_224.ms_in22k", {}, None),
    # the thesis's ResNet-50 is ILM-VP's torchvision V2 weights (evaluated at 224); timm's bare
    # "resnet50" is the a1_in1k recipe, evaluated at 288
    "resnet50": ("resnet50.tv2_in1k", {}, None),
    "convnext_base": ("convnext_base", {}, None),
    "madapt-tiny-vit-in21k": (
        "vit_base_patch16_224.augreg_in21k",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        32,
    ),
    "madapt-tiny-vit": (
        "vit_base_patch16_224.augreg_in1k",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        32,
    ),
    "madapt-tiny-swin": (
        "swin_base_patch4_window7_224",
        {"img_size": 32, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2), "window_size": 4},
        32,
    ),
    "madapt-tiny-resnet50": (
        "resnet50",
        {"layers": (1, 1, 1, 1), "channels": (8, 16, 32, 64), "stem_width": 8},
        32,
    ),
    "madapt-tiny-convnext": ("convnext_base", {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)}, 32),
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
    classnames: list[str] | None = None  # source class names when the weights come with them


def load_classifier(
    name: str, weights: str | os.PathLike[str] | None = None, *, new_head: bool = False, **timm_kwargs: Any
) -> ClassifierBackbone:
    """Build classifier ``name`` (a preset above or any timm model name) with local ``weights``.

    ``weights`` is None (random init from the global torch RNG) or a local file (.safetensors,
    or a timm/torchvision state dict readable with ``weights_only=True``). ``timm_kwargs`` go to
    `timm.create_model` after the preset's own (e.g. ``num_classes``, ``img_size``).

    The file's head is loaded when its size is the model's (``num_classes``, else the preset's).
    Otherwise: `WeightsError` naming the file and both sizes, as label mapping needs the source
    head (seed 000 ch. 6); with ``new_head=True`` the head is initialised anew (global torch RNG),
    the rest of the checkpoint still loads strictly and one warning line is logged.
    """
    timm_name, preset_kwargs, side = _resolve(name)
    kwargs = {**preset_kwargs, **timm_kwargs}
    if weights is None:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    else:
        file = existing_weights_file(weights, f"weights of classifier {name}")
        model = _create_from_file(timm_name, name, file, kwargs, new_head)
    model.eval()

    data_config = resolve_data_config(
        _size_override(kwargs.get("img_size", side)), model=model, use_test_size=True
    )
    return ClassifierBackbone(
        model=model,
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        input_size=tuple(data_config["input_size"]),
        num_classes=int(model.num_classes),
        data_config=data_config,
    )


def _size_override(img_size: int | tuple[int, int] | None) -> dict[str, Any]:
    return {"input_size": (3, *_pair(img_size))} if img_size is not None else {}


def eval_data_config(name: str) -> dict[str, Any]:
    """timm's *evaluation* data config of classifier ``name`` (input size, mean/std, crop), read from
    its pretrained config without building the model. ``use_test_size``: timm's ResNet-50
    ``tv2_in1k`` trains at 176 px but is evaluated at 224, and a frozen source model is only ever
    evaluated, so prompts are sized to the test input (224 for every backbone of Table 6.1)."""
    timm_name, kwargs, side = _resolve(name)
    pretrained = timm.models.get_pretrained_cfg(timm_name).to_dict()
    return resolve_data_config(
        _size_override(kwargs.get("img_size", side)), pretrained_cfg=pretrained, use_test_size=True
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


def _create_from_file(
    timm_name: str, name: str, file: Any, kwargs: dict[str, Any], new_head: bool
) -> torch.nn.Module:
    where = f"weights of classifier {name}"
    overlay: dict[str, Any] = {"file": str(file)}  # takes priority over every hub/url source: no download
    if kwargs.get("num_classes"):  # 0 = headless features: timm dropping the head is then what is asked
        # timm drops the checkpoint's head whenever num_classes differs from its pretrained config,
        # even if the file's head has exactly the asked size; declaring that size keeps the load strict
        overlay["num_classes"] = kwargs["num_classes"]
    try:
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as load_err:  # noqa: BLE001  (safetensors, zip, unpickling and key errors share no base)
        try:
            load_state_dict(str(file))  # failure path only: tells an unreadable file from a wrong one
        except Exception as read_err:  # noqa: BLE001  (any failure to read means unreadable)
            raise unreadable(file, where, read_err) from None
        in_file = _head_only_mismatch(load_err, timm_name)
        if in_file is None:
            first = (str(load_err).strip().splitlines() or [type(load_err).__name__])[0][:200]
            raise WeightsError(
                f"{where} '{file}'",
                f"do not match the architecture: {first}",
                f"a checkpoint of {timm_name} with these settings",
            ) from None
    in_model = kwargs.get("num_classes") or timm.models.get_pretrained_cfg_value(timm_name, "num_classes")
    if not new_head:
        raise WeightsError(
            f"{where} '{file}'",
            f"have a {in_file}-way head but the model a {in_model}-way one "
            "(label mapping needs the checkpoint's own head)",
            f"a checkpoint with a {in_model}-way head, num_classes={in_file} to keep this "
            f"one, or new_head=True to train a new {in_model}-way head",
        )
    # Only the head differed (strict load above): let timm load everything else and drop the head.
    overlay["num_classes"] = in_file
    model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    _log.warning(
        "classifier %s: '%s' has a %d-way head; the %d-way head is new (random init), "
        "every other weight is loaded",
        name,
        file,
        in_file,
        in_model,
    )
    return model


_SIZE_MISMATCH = re.compile(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[(\d+)")
_log = logging.getLogger(__name__)


def _head_only_mismatch(err: Exception, timm_name: str) -> int | None:
    """The classes of the checkpoint's head if the strict load failed on the head alone, else None.

    Read from torch's ``load_state_dict`` report, i.e. after timm's checkpoint filter renamed keys.
    """
    text = str(err)
    classifier = timm.models.get_pretrained_cfg_value(timm_name, "classifier") or ()
    heads = {
        f"{c}.{p}"
        for c in ((classifier,) if isinstance(classifier, str) else classifier)
        for p in ("weight", "bias")
    }
    found = _SIZE_MISMATCH.findall(text)
    if not found or "Missing key(s)" in text or "Unexpected key(s)" in text:
        return None
    if any(key not in heads for key, _ in found):
        return None
    return int(found[0][1])


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Freeze ``model`` in place for prompting: no parameter trains, eval mode (BatchNorm stats fixed)."""
    model.requires_grad_(False)
    model.eval()
    return model


def micro_source_dir() -> Path:
    return Path(str(files("madapt").joinpath("assets", "micro_source")))


@register("backbone", "micro-source")
def load_micro_source(weights: str | None = None) -> ClassifierBackbone:
    """The micro source classifier (a timm ResNet at 32 px, 116 classes) with bundled weights.

    ``weights`` overrides the bundled safetensors file. The backbone's ``classnames`` attribute
    lists the source classes.
    """
    from madapt.runs import load_tensors

    folder = micro_source_dir()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    path = Path(weights) if weights else folder / "weights.safetensors"
    # Built empty and filled strictly: timm's pretrained loader would drop a 116-way head as a
    # mismatch with the preset's 1000 classes.
    backbone = load_classifier(config["preset"], **config["timm_kwargs"])
    try:
        backbone.model.load_state_dict(load_tensors(path))
    except RuntimeError as err:
        raise WeightsError(
            f"weights of backbone micro-source '{path}'",
            "do not match the architecture: " + str(err).splitlines()[0][:160],
            "a checkpoint written by scripts/pretrain_micro_source.py",
        ) from None
    backbone.classnames = list(config["classes"])
    return backbone


for _name in CLASSIFIERS:
    register("backbone", _name)(functools.partial(load_classifier, _name))
