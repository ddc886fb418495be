"""Shared helpers of the few-shot tests: a frozen micro CLIP with a small K-shot micro task, and contexts."""

from __future__ import annotations

import copy

import torch

from madapt.backbones.micro import load_micro_clip
from madapt.data import fewshot_micro
from madapt.prompting.fewshot import FewShotContext, steps_per_epoch


def micro_task(domain: str, shots: int = 2, seed: int = 1):
    """(frozen micro CLIP, K-shot splits of ``domain``) from small generated lists."""
    backbone = load_micro_clip()
    backbone.model.requires_grad_(False)
    pool = fewshot_micro.micro_pool(domain, train_per_class=8, val_per_class=4, test_size=40)
    return backbone, fewshot_micro.sample_micro(pool, shots, seed, backbone.mean, backbone.std)


def make_ctx(micro, epochs: int = 3, batch: int = 4) -> FewShotContext:
    """A context on a fresh copy of the backbone, with Dassl's iterations per epoch."""
    backbone, splits = micro
    return FewShotContext(
        copy.deepcopy(backbone),
        splits.classnames,
        splits.templates,
        torch.device("cpu"),
        epochs,
        steps_per_epoch(len(splits.train), batch),
    )
