"""Few-shot subsampling: k training images per class (few-shot MTIL, seed 002 §5: 5 shots).

`labels_of` reads labels from the metadata torchvision datasets already hold, so choosing the
shots never decodes an image; `few_shot_indices` draws ``shots`` indices per class with a seeded
generator, so the same seed always gives the same subset. (ConDU's `few_shot_finetune.py` keeps
the first k images per class of an unseeded shuffled loader: the same uniform draw, but not
reproducible, and it silently keeps fewer for a small class where we raise.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from madapt.errors import DataError

# Attributes under which torchvision (and our loaders) keep per-sample labels, cheapest first.
# `_samples` / `samples` hold (path, label) pairs; Caltech101 keeps its labels in `y`.
_LABEL_ATTRS = ("targets", "_labels", "y")
_PAIR_ATTRS = ("_samples", "samples")


def labels_of(dataset: Dataset) -> list[int]:
    """Per-sample integer labels of ``dataset`` without loading images when possible."""
    if isinstance(dataset, Subset):
        parent = labels_of(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    for attr in _LABEL_ATTRS:
        value = getattr(dataset, attr, None)
        if value is not None and len(value) == len(dataset):  # type: ignore[arg-type]
            return [int(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    for attr in _PAIR_ATTRS:
        value = getattr(dataset, attr, None)
        if value is not None and len(value) == len(dataset):  # type: ignore[arg-type]
            return [int(pair[1]) for pair in value]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def few_shot_indices(
    labels: Sequence[int],
    shots: int,
    seed: int,
    dataset: str = "dataset",
    classnames: Sequence[str] | None = None,
) -> list[int]:
    """``shots`` indices per class, drawn with ``torch.Generator().manual_seed(seed)``.

    Classes are visited in label order and each class's candidates are permuted with the same
    generator, so the result depends only on (labels, shots, seed). Returned sorted. A class with
    fewer than ``shots`` samples is a `DataError` naming the dataset and the class.
    """
    if shots <= 0:
        raise DataError(
            f"few-shot subset of '{dataset}'", f"shots = {shots}", "a positive number of images per class"
        )
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    if not by_class:
        raise DataError(
            f"few-shot subset of '{dataset}'", "the split is empty", "at least one labelled image per class"
        )
    smallest = min(by_class, key=lambda c: (len(by_class[c]), c))
    if len(by_class[smallest]) < shots:
        name = f" '{classnames[smallest]}'" if classnames is not None else ""
        raise DataError(
            f"few-shot subset of '{dataset}'",
            f"class {smallest}{name} has only {len(by_class[smallest])} images",
            f"shots ({shots}) <= the smallest class size",
        )
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in sorted(by_class):
        members = by_class[c]
        order = torch.randperm(len(members), generator=generator)[:shots].tolist()
        chosen.extend(members[j] for j in order)
    return sorted(chosen)


def few_shot_subset(dataset: Any, shots: int, seed: int, name: str = "dataset") -> Subset:
    """``Subset`` of ``dataset`` with ``shots`` images per class (see `few_shot_indices`)."""
    classnames = getattr(dataset, "classnames", None)
    return Subset(dataset, few_shot_indices(labels_of(dataset), shots, seed, name, classnames))
