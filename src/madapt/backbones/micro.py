"""The embedded micro CLIP: a closed word-level tokenizer and an open_clip `CLIP` of ~1.7 M params.

The model is open_clip's own `open_clip.model.CLIP` built from a custom config (32 px ViT, patch 8;
4-layer text transformer, context 20), pretrained by ``scripts/pretrain_micro_clip.py`` on the
procedural world of `madapt.data.synthetic` and shipped as safetensors under ``assets/micro_clip``.

Why a word-level tokenizer: open_clip's BPE needs a 49,408-row embedding (6.3 M parameters), more
than the rest of the model. The micro world's captions use fewer than a hundred words, so a closed
vocabulary is enough. Ids: 0 = padding, 1 = ``<unk>`` (any word outside the vocabulary, e.g. a new
class name: it gets one shared, untrained-for-meaning embedding), 2.. = the words, then ``<sot>``
and ``<eot>``. ``<eot>`` has the largest id so that open_clip's ``argmax`` text pooling (which
takes the features at the position of the largest token id) pools at end-of-text, as for BPE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip.model import CLIP
from safetensors.torch import load_file
from torchvision import transforms

from madapt.backbones import existing_weights_file, unreadable
from madapt.backbones.clip import ClipBackbone
from madapt.data.synthetic import tokenize_words
from madapt.errors import WeightsError
from madapt.registry import register

PAD_ID, UNK_ID = 0, 1


def bundled_dir() -> Path:
    """Folder of the shipped micro CLIP (config.json, weights.safetensors, vocab.json)."""
    return Path(str(files("madapt").joinpath("assets", "micro_clip")))


@dataclass
class MicroTokenizer:
    """Closed word-level tokenizer with open_clip's call convention: texts -> LongTensor N x L."""

    words: list[str]
    context_length: int = 20

    def __post_init__(self) -> None:
        self.index = {w: i + 2 for i, w in enumerate(self.words)}
        self.sot_id = len(self.words) + 2
        self.eot_id = len(self.words) + 3

    @property
    def vocab_size(self) -> int:
        return self.eot_id + 1

    # open_clip's SimpleTokenizer names, so code written for BPE CLIP works on the micro CLIP too
    sot_token_id = property(lambda self: self.sot_id)
    eot_token_id = property(lambda self: self.eot_id)

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.full((len(texts), length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            # Truncation keeps <eot> last so that argmax pooling still finds it.
            ids = [self.index.get(w, UNK_ID) for w in tokenize_words(text)][: length - 2]
            out[row, : len(ids) + 2] = torch.tensor([self.sot_id, *ids, self.eot_id])
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "words": self.words,
            "context_length": self.context_length,
            "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "sot": self.sot_id, "eot": self.eot_id},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MicroTokenizer:
        return cls(list(data["words"]), int(data["context_length"]))


def micro_config(vocab_size: int, context_length: int = 20) -> dict[str, Any]:
    """The open_clip model config (same keys as open_clip's ``model_configs/*.json``)."""
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": 128,
            "heads": 4,
            "layers": 4,
            "pad_id": PAD_ID,
        },
        "preprocess_cfg": {"mean": [0.3, 0.3, 0.3], "std": [0.25, 0.25, 0.25]},
    }


def build_micro_model(config: dict[str, Any]) -> CLIP:
    """A randomly initialised open_clip `CLIP` from a micro config (``preprocess_cfg`` ignored)."""
    cfg = {k: v for k, v in config.items() if k != "preprocess_cfg"}
    return CLIP(**cfg)


def images_to_tensor(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalised float N x 3 x H x W (the batched form of preprocess)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(
            str(path),
            f"unreadable ({exc.__class__.__name__})",
            "a JSON file written by scripts/pretrain_micro_clip.py",
        ) from exc


@register("clip", "micro-clip")
@register("backbone", "micro-clip")
def load_micro_clip(weights: str | None = None) -> ClipBackbone:
    """The micro CLIP as a `ClipBackbone` (default: the bundled, pretrained weights).

    ``weights`` is a ``.safetensors`` file; ``config.json`` and ``vocab.json`` are read from the
    same folder. Keys must match the open_clip model exactly (strict loading).
    """
    path = existing_weights_file(weights or bundled_dir() / "weights.safetensors", "micro-clip weights")
    config = _read_json(path.parent / "config.json")
    tokenizer = MicroTokenizer.from_json(_read_json(path.parent / "vocab.json"))
    model = build_micro_model(config)
    try:
        state = {k: v.float() for k, v in load_file(str(path)).items()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise unreadable(path, "micro-clip weights", err) from None
    own = model.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        odd = sorted(set(state) ^ set(own)) or [k for k in own if state[k].shape != own[k].shape]
        raise WeightsError(
            f"micro-clip weights '{path}'",
            f"do not match its config.json (e.g. key {odd[0]})",
            "weights written by scripts/pretrain_micro_clip.py with that config",
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    mean, std = config["preprocess_cfg"]["mean"], config["preprocess_cfg"]["std"]
    size = config["vision_cfg"]["image_size"]
    preprocess = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    return ClipBackbone(
        model=model,
        tokenizer=tokenizer,
        preprocess_train=preprocess,
        preprocess_val=preprocess,
        image_size=size,
        mean=tuple(mean),
        std=tuple(std),
    )
