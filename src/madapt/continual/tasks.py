"""What one task of a continual sequence is: a named classification dataset with class texts.

The engine and the methods only see `Task`; where the images come from (the generated micro world,
real MTIL folders, a class-incremental split) is decided by the builders in `continual/recipe.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from madapt.backbones.clip import fill_template


@dataclass
class Task:
    """One dataset of the sequence (seed 000 §3.5.1: MTIL; §3.5.1.1: CIL steps).

    ``templates[0]`` builds the training texts; the evaluation head averages all templates (ZSCL).
    ``class_offset`` places the classes in the union label space used by task-agnostic evaluation.
    ``train_eval`` is the training split under the evaluation transforms: ZSCL's code reads it for
    the images its LwF distils on and its iCaRL memorises (`distill_images`).
    """

    name: str
    classnames: list[str]
    templates: list[str]
    train: Dataset
    test: Dataset
    class_offset: int = 0
    train_eval: Dataset | None = field(default=None, repr=False)

    @property
    def distill_images(self) -> Dataset:
        """The training split as ZSCL's reference loaders read it (evaluation transforms)."""
        return self.train_eval if self.train_eval is not None else self.train

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def texts(self, ensemble: bool) -> list[list[str]]:
        """Per class, the prompt texts: only the first template for training, all for evaluation."""
        templates = self.templates if ensemble else self.templates[:1]
        return [[fill_template(t, c) for t in templates] for c in self.classnames]


class ArrayDataset(Dataset):
    """uint8 images (N, H, W, 3) in memory -> normalised float tensors (the micro world)."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float().div_(255.0)
        return (image - self.mean) / self.std, self.labels[index]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectorised gather: the micro benchmark spends no time in per-item Python."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[idx].float().div_(255.0)
        return (images - self.mean) / self.std, self.labels[idx]


class StepView(Dataset):
    """The samples of ``dataset`` whose class is in ``classes``, relabelled 0..len(classes)-1.

    One class-incremental step (seed 000 §3.5.1.1): the step's own label space; the engine places
    it in the union of seen classes through `Task.class_offset`.
    """

    def __init__(self, dataset: Dataset, labels: Sequence[int], classes: Sequence[int]) -> None:
        local = {int(c): i for i, c in enumerate(classes)}
        self.dataset = dataset
        self.indices = [i for i, y in enumerate(labels) if int(y) in local]
        self.labels = torch.as_tensor([local[int(labels[i])] for i in self.indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.dataset[self.indices[i]]
        return image, self.labels[i]
