"""A tiny real CLIP (open_clip classes, random init) and three small random tasks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from madapt.backbones.clip import load_clip
from madapt.continual.engine import Context, TrainSettings
from madapt.continual.tasks import ArrayDataset, Task

CLASSES = [["red", "green", "blue"], ["cat", "dog"], ["one", "two", "three", "four"]]


@pytest.fixture(scope="session")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip("madapt-tiny-ViT-B-16")


def make_tasks(backbone, n_train: int = 24, n_test: int = 12) -> list[Task]:
    rng = np.random.default_rng(0)
    tasks, offset = [], 0
    for t, names in enumerate(CLASSES):
        def split(n):
            labels = np.arange(n) % len(names)
            # class-dependent brightness so that training can actually learn something
            images = rng.integers(0, 60, size=(n, 32, 32, 3)) + (labels[:, None, None, None] * 60)
            return ArrayDataset(images.astype(np.uint8), labels, backbone.mean, backbone.std)

        tasks.append(Task(f"task{t}", names, ["a photo of a {}.", "an image of {}."], split(n_train), split(n_test),
                          class_offset=offset))
        offset += len(names)
    return tasks


@pytest.fixture
def ctx_factory(tiny_clip):
    def make(iterations: int = 4, **kw) -> Context:
        backbone = copy.deepcopy(tiny_clip)
        settings = TrainSettings(iterations=iterations, batch_size=6, lrs=[1e-3, 1e-3, 1e-3], warmup_steps=1,
                                 checkpoint_every=kw.pop("checkpoint_every", 2), eval_batch_size=8, seed=3, **kw)
        return Context(backbone=backbone, tasks=make_tasks(backbone), settings=settings, device=torch.device("cpu"))

    return make
