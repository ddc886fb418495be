"""CLIP backbones over open_clip: load by architecture name, tokenize, encode, zero-shot heads.

The architecture is an open_clip model name ("ViT-B-16", "ViT-B-16-quickgelu", ...) or one of our
tiny ones, which are open_clip custom model configs (``assets/model_configs/*.json``) registered
with `open_clip.add_model_config` on import, so tests run the very classes ViT-B/16 uses.

Weights come from a local file or from open_clip's cache; nothing is ever downloaded. The
preprocessing and the zero-shot protocol follow CLIP as used by ZSCL (seed 000 ch. 3-4, the MTIL
protocol): train RandomResizedCrop(scale 0.9-1.0, bicubic); eval Resize + CenterCrop (bicubic);
CLIP mean/std; class embeddings from ``templates[0]`` when training and from the normalised mean
over all templates when evaluating; logits = 100 * image @ text.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.convert import convert_state_dict
from open_clip.factory import load_state_dict
from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from madapt.backbones import READABLE, existing_weights_file, unreadable
from madapt.errors import ConfigError, UnknownNameError, WeightsError, closest
from madapt.registry import register

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "assets" / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)
TINY_ARCHS = tuple(sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")))

PRECISIONS = ("fp32", "amp", "amp_bf16", "fp16", "bf16", "pure_fp16", "pure_bf16")

Template = str | Callable[[str], str]


@dataclass
class ClipBackbone:
    """An open_clip model with its tokenizer and image transforms."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_val: Callable[[Any], torch.Tensor]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids [n, context_length] (int64) on the model's device."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts).to(self.device)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        # the patch embedding's dtype, so half-precision models take float32 pixel batches
        first = getattr(getattr(self.model.visual, "conv1", None), "weight", None)
        dtype = first.dtype if first is not None else next(self.model.parameters()).dtype
        return self.model.encode_image(images.to(self.device, dtype), normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.model.encode_text(tokens.to(self.device), normalize=normalize)


def load_clip(
    arch: str,
    pretrained: str | os.PathLike[str] | None = None,
    *,
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> ClipBackbone:
    """Build the open_clip architecture ``arch`` and load ``pretrained`` weights, offline only.

    ``pretrained`` is None (random init from the global torch RNG, so deterministic under
    `torch.manual_seed`), a local checkpoint file (.safetensors, or an open_clip/OpenAI state
    dict readable with ``weights_only=True``), or an open_clip pretrained tag such as "openai",
    used only when its file is already in the local cache (``cache_dir``, else the Hugging Face
    cache and ``~/.cache/clip``). OpenAI's weights use QuickGELU: with a file path, pass the arch
    "ViT-B-16-quickgelu"; with the tag "openai" this is set from the tag.
    """
    if arch not in open_clip.list_models():
        raise UnknownNameError(
            f"CLIP architecture '{arch}'",
            "is not an open_clip model config" + closest(arch, open_clip.list_models()),
            f"an open_clip model name such as 'ViT-B-16', or one of {', '.join(TINY_ARCHS)}",
        )
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"'{precision}'", f"one of {', '.join(PRECISIONS)}")

    pretrained = os.fspath(pretrained) if pretrained is not None else None
    tag_cfg: dict[str, Any] = {}
    if pretrained is not None and open_clip.pretrained.is_pretrained_cfg(arch, pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        weights: Path | None = _cached_tag_file(arch, pretrained, tag_cfg, cache_dir)
    elif pretrained is not None:
        weights = _weights_path(arch, pretrained)
    else:
        weights = None
    state_dict = _read(weights) if weights is not None else None

    # random init was asked for (pretrained=None) or our own loader follows: the notice is noise either way
    with _quiet_random_init_notice():
        model = open_clip.create_model(
            arch,
            pretrained=None,
            precision=precision,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=merge_preprocess_dict({}, tag_cfg),
        )
    if state_dict is not None:
        _load_into(model, state_dict, arch, weights)
    model.eval()

    cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    size = cfg.size if isinstance(cfg.size, int) else cfg.size[0]
    return ClipBackbone(
        model=model,
        tokenizer=open_clip.get_tokenizer(arch),
        preprocess_train=image_transform_v2(cfg, is_train=True),
        preprocess_val=image_transform_v2(cfg, is_train=False),
        image_size=int(size),
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_notice():
    """Hide open_clip's "initialized randomly" warning while the weights are about to be loaded by us."""
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)  # open_clip logs through the root logger
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


def _weights_path(arch: str, pretrained: str) -> Path:
    try:
        return existing_weights_file(pretrained, "pretrained")
    except WeightsError as err:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        also = f", or a cached open_clip tag of {arch}: {', '.join(tags)}" if tags else ""
        raise WeightsError(err.where, err.found + closest(pretrained, tags), READABLE + also) from None


def _cached_tag_file(arch: str, tag: str, tag_cfg: dict[str, Any], cache_dir: str | None) -> Path:
    """The local file of an open_clip tag, looked up the way open_clip would download it, no network."""
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        if not filename:
            names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        elif filename.endswith((".bin", ".pth")):
            names = [filename[:-4] + ".safetensors", filename]
        else:
            names = [filename]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return Path(found)
    url = tag_cfg.get("url", "")
    if url:
        legacy = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if legacy.is_file():
            return legacy
    raise WeightsError(
        f"pretrained '{tag}' of {arch}",
        "is an open_clip tag whose weights are not in the local cache (madapt never downloads)",
        "a local weights path: pass pretrained=/path/to/file.safetensors",
    )


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = load_state_dict(str(path), weights_only=True)
    except Exception as err:  # safetensors, zip and unpickling errors share no base class
        raise unreadable(path, "pretrained", err) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(
            f"pretrained '{path}'", "holds something other than a state dict of tensors", READABLE
        )
    return state_dict


def _load_into(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], arch: str, path: Path | None
) -> None:
    """open_clip's own key/shape conversions (as in `open_clip.load_checkpoint`), then a strict load."""
    sd = convert_state_dict(model, dict(state_dict))
    for key in ("input_resolution", "context_length", "vocab_size"):  # metadata in OpenAI's files
        sd.pop(key, None)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    own = model.state_dict()
    if "logit_scale" in sd and sd["logit_scale"].ndim != own["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(own["logit_scale"].shape)
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)

    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(sd[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise WeightsError(
            f"pretrained '{path}'",
            f"does not match architecture {arch}: " + ", ".join(parts),
            f"a checkpoint of {arch} (pick the arch the weights were trained with)",
        )
    model.load_state_dict(sd, strict=True)


def fill_template(template: Template, classname: str) -> str:
    """``template`` applied to a class name: a callable, or a format string with "{}" or "{c}"."""
    if callable(template):
        return template(classname)
    if "{c}" in template:
        return template.replace("{c}", classname)
    if "{}" in template:
        return template.replace("{}", classname)
    raise ConfigError(
        "templates", f"'{template}' has no class placeholder", "a string containing '{}' or '{c}'"
    )


def random_token_texts(tokenizer: Any, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """ZSCL's virtual vocabulary (``helpers.virtual_vocab``): ``n`` texts of ``length`` token ids drawn
    uniformly from the whole vocabulary, framed by start/end of text and zero-padded to the
    tokenizer's context length (LwF-VR's "random sentences")."""
    body = torch.randint(0, tokenizer.vocab_size, (n, length), generator=generator)
    start = torch.full((n, 1), tokenizer.sot_token_id)
    end = torch.full((n, 1), tokenizer.eot_token_id)
    pad = torch.zeros((n, tokenizer.context_length - length - 2), dtype=torch.long)
    return torch.cat([start, body, end, pad], dim=1)


def zero_shot_head(
    backbone: ClipBackbone,
    classnames: list[str],
    templates: Sequence[Template],
    *,
    ensemble: bool = True,
    batch_size: int = 256,
) -> torch.Tensor:
    """Class embeddings [n_classes, embed_dim], each row L2-normalised (ZSCL ``zeroshot_classifier``).

    ``ensemble=True`` (evaluation): the normalised mean of the normalised embeddings of every
    template. ``ensemble=False`` (training): ``templates[0]`` only. Gradients follow the caller's
    grad mode: wrap in `torch.no_grad()` for evaluation, keep it on to train the text encoder.
    """
    if not templates:
        raise ConfigError("templates", "an empty list", "at least one template")
    used = list(templates) if ensemble else [templates[0]]
    texts = [fill_template(t, c) for c in classnames for t in used]
    tokens = backbone.tokenize(texts)
    parts = [
        backbone.encode_text(tokens[i : i + batch_size], normalize=True)
        for i in range(0, len(texts), batch_size)
    ]
    per_template = torch.cat(parts).float().reshape(len(classnames), len(used), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def clip_logits(image_features: torch.Tensor, head: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """``scale * image_features @ head.T``; both inputs are expected L2-normalised (CLIP's fixed 100)."""
    return scale * image_features @ head.to(image_features.dtype).T


# names users put in configs; any other open_clip name still works through `load_clip`
CLIP_BACKBONES = ("ViT-B-16", "ViT-B-16-quickgelu", "ViT-B-32", "ViT-B-32-quickgelu", "ViT-L-14") + TINY_ARCHS
for _arch in CLIP_BACKBONES:
    register("backbone", _arch)(functools.partial(load_clip, _arch))
    register("clip", _arch)(functools.partial(load_clip, _arch))  # the family CLIP recipes accept
