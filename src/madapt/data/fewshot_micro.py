"""Few-shot tasks of the micro world on the CoOp protocol (seed 003 §4.1: 16 shots, 3 seeds).

Each micro domain of `madapt.data.synthetic` (colour, count, digit, letter, shape, texture) becomes a
CoOp-style dataset: a fixed *full* training list and validation list (generated once, independent of
the run seed, like the ``split_zhou`` files), from which each seed draws K images per class for
training and min(K, 4) per class for validation (CoOp ``generate_fewshot_dataset``), and a full
test split. Class names and templates are the domain's; ``templates[0]`` ("a photo of {}." style)
plays the role of CoOp's hand template. No augmentation: micro images are 32 px and were pretrained
without crops (CoOp's random resized crop and flip apply to the real datasets only).

Deviation: shots are drawn with `madapt.data.fewshot.few_shot_indices` (a seeded torch generator),
not Dassl's ``random.sample`` under Python's global RNG; the drawn indices are kept in ``indices``
and the recipe writes them to the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from madapt.continual.tasks import ArrayDataset
from madapt.data import synthetic
from madapt.data.fewshot import few_shot_indices
from madapt.errors import DataError

MICRO_FEWSHOT = ("colour", "count", "digit", "letter", "shape", "texture")
WORLD_SEED = 0  # the "split files" of the micro world are one fixed draw, whatever the run seed


@dataclass
class FewShotSplits:
    """One few-shot dataset for one seed: the fields of `madapt.data.coop.FewShotSplits`."""

    name: str
    classnames: list[str]
    templates: list[str]
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    indices: dict[str, list[int]]


@dataclass
class MicroPool:
    """The full (pre-sampling) lists of one micro domain: uint8 images and labels per split."""

    name: str
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def micro_pool(
    name: str, train_per_class: int = 48, val_per_class: int = 8, test_size: int = 600
) -> MicroPool:
    """Generate the full lists of a micro domain (deterministic; train and val are disjoint draws)."""
    if name not in MICRO_FEWSHOT:
        raise DataError(
            f"micro few-shot dataset '{name}'", "is not a micro domain", "one of: " + ", ".join(MICRO_FEWSHOT)
        )
    n = synthetic.micro_domains()[name].n_classes
    return MicroPool(
        name,
        synthetic.make_split(name, "train", train_per_class * n, WORLD_SEED),
        synthetic.make_split(name, "train", val_per_class * n, WORLD_SEED + 1),
        synthetic.make_split(name, "test", test_size, WORLD_SEED),
    )


def sample_micro(
    pool: MicroPool,
    shots: int,
    seed: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    indices: dict[str, list[int]] | None = None,
) -> FewShotSplits:
    """K shots per class for training, min(K, 4) for validation; ``indices`` (from a run folder) wins."""
    spec = synthetic.micro_domains()[pool.name]
    if indices is None:
        indices = {
            "train": few_shot_indices(pool.train[1], shots, seed, pool.name, spec.classnames),
            "val": few_shot_indices(pool.val[1], min(shots, 4), seed, pool.name, spec.classnames),
        }
    for split in ("train", "val"):
        n = len(getattr(pool, split)[1])
        bad = [i for i in indices.get(split, []) if not 0 <= int(i) < n]
        if split not in indices or bad:
            raise DataError(
                f"few-shot indices of '{pool.name}' ({split})",
                "are missing" if split not in indices else f"index {bad[0]} out of range",
                f"indices into the {n} generated {split} images",
            )

    def subset(split: str) -> ArrayDataset:
        images, labels = getattr(pool, split)
        keep = np.asarray(indices[split], dtype=np.int64)
        return ArrayDataset(images[keep], labels[keep], mean, std)

    return FewShotSplits(
        pool.name,
        list(spec.classnames),
        list(spec.templates),
        subset("train"),
        subset("val"),
        ArrayDataset(*pool.test, mean, std),
        {k: [int(i) for i in v] for k, v in indices.items()},
    )
