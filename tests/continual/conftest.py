"""A tiny real CLIP (open_clip classes, random init), three small random tasks, and helpers to
build methods from their Configs and drive them the way the engine does."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cl_helpers import SMALL, build  # noqa: F401  (re-exported for the tests)

from madapt.backbones.clip import load_clip
from madapt.continual.context import Context, TrainSettings
from madapt.continual.datasets import Reference
from madapt.continual.tasks import ArrayDataset, Task

CLASSES = [["red", "green", "blue"], ["cat", "dog"], ["one", "two", "three", "four"]]
CAPTIONS = ["a red square", "two green dots", "a blue cat", "a dog on grass", "the number four", "a line"]


@pytest.fixture(scope="session")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip("madapt-tiny-ViT-B-16")


def make_tasks(backbone, n_train: int = 24, n_test: int = 12) -> list[Task]:
    rng = np.random.default_rng(0)
    tasks, offset = [], 0
    for t, names in enumerate(CLASSES):

        def split(n, names=names):
            labels = np.arange(n) % len(names)
            # class-dependent brightness so that training can actually learn something
            images = rng.integers(0, 60, size=(n, 32, 32, 3)) + (labels[:, None, None, None] * 60)
            return ArrayDataset(images.astype(np.uint8), labels, backbone.mean, backbone.std)

        tasks.append(
            Task(
                f"task{t}",
                names,
                ["a photo of a {}.", "an image of {}."],
                split(n_train),
                split(n_test),
                class_offset=offset,
            )
        )
        offset += len(names)
    return tasks


def make_reference(backbone, n_images: int = 10) -> Reference:
    """Reference images + captions for ZSCL / AwoF (ImageNet / CC in the papers; random here)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(n_images, 32, 32, 3)).astype(np.uint8)
    data = ArrayDataset(images, np.zeros(n_images, dtype=np.int64), backbone.mean, backbone.std)
    return Reference(data, list(CAPTIONS), sorted({w for c in CAPTIONS for w in c.split()}))


@pytest.fixture
def ctx_factory(tiny_clip):
    def make(iterations: int = 4, **kw) -> Context:
        backbone = copy.deepcopy(tiny_clip)
        settings = TrainSettings(
            iterations=[iterations] * 3,
            batch_size=kw.pop("batch_size", 6),
            lrs=[1e-3, 1e-3, 1e-3],
            warmup_steps=1,
            checkpoint_every=kw.pop("checkpoint_every", 2),
            eval_batch_size=8,
            seed=3,
            **kw,
        )
        ctx = Context(
            backbone=backbone,
            tasks=make_tasks(backbone),
            settings=settings,
            device=torch.device("cpu"),
            reference=make_reference(backbone),
            artifacts=Path(tempfile.mkdtemp(prefix="madapt-artifacts-")),
        )
        ctx.pretrained = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        return ctx

    return make
