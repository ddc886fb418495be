"""Pretrained backbones behind thin wrappers over real libraries (no vendored model code).

- `madapt.backbones.clip`: CLIP over open_clip (tokenizer, normalised encoders, zero-shot heads).
- `madapt.backbones.classifier`: image classifiers over timm (ViT, Swin, ResNet, ConvNeXt).
- `madapt.backbones.causal_lm`: Pythia-style GPT-NeoX language models over transformers.

Each submodule registers its names under the registry kind ``backbone`` when imported
(`madapt.catalog` imports them all). This file only holds the check shared by the loaders: a
weights path the user gave must be an existing file, and a file that cannot be read is reported
as one `WeightsError`, never as a library traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from madapt.errors import WeightsError

READABLE = "a .safetensors file or a torch checkpoint of tensors loadable with weights_only=True"


def existing_weights_file(path: str | os.PathLike[str], where: str) -> Path:
    """``path`` as a `Path` if it is an existing file, else a `WeightsError` naming ``where``."""
    file = Path(path).expanduser()
    if not file.is_file():
        found = "is a folder, not a file" if file.is_dir() else "no such file"
        raise WeightsError(f"{where} '{path}'", found, READABLE)
    return file


def unreadable(path: str | os.PathLike[str], where: str, err: BaseException) -> WeightsError:
    """The error for a weights file that exists but cannot be parsed (corrupt, pickle, TorchScript)."""
    detail = (str(err).strip().splitlines() or [""])[0][:200]
    hint = ""
    if "TorchScript" in str(err):
        # OpenAI's original CLIP .pt files are TorchScript archives, which weights_only refuses
        hint = " (TorchScript archive: convert it once to safetensors from its state_dict)"
    return WeightsError(
        f"{where} '{path}'", f"cannot be read: {type(err).__name__}: {detail}{hint}", READABLE
    )
