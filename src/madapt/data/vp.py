"""Data for visual prompting (seed 000 ch. 6): the micro source world, micro targets, real folders.

The micro setting mirrors the thesis' one in miniature: a *source* classifier trained on many
classes (116 procedurally drawn "ImageNet" classes: 80 colour × shape objects, 26 capital letters
and 10 printed digits, fonts of the pretraining set) is reprogrammed for *targets* whose classes it
never saw, through an input prompt and a source→target label mapping:

- ``digits``: scikit-learn's handwritten digits as ink on paper (10 classes);
- ``letters``: lower-case letters in fonts unseen by the source (26 classes);
- ``shapes``: the 8 shapes rotated, in dark/pastel colours (8 classes);
- ``textures``: the 6 background textures at new scales and angles (6 classes).

Images are uint8 (N, 32, 32, 3) arrays, deterministic in (name, split, size, seed); rendering
reuses the painters of `madapt.data.synthetic`; train, val and test come from disjoint random
streams. Real datasets (seed Table 6.2) are read in their standard on-disk layouts by
`madapt.data.vp_real.load_real`; `load_folder` here is its fallback, an ImageFolder tree
``data_root/<name>/{train,test[,val]}/<class>/*`` (e.g. splits exported to folders). Both turn PIL
images into tensors with `image_transform` (the prompt's own resize, see there); `holdout` carves
a stratified validation split out of a training set that has none (Table 6.2's 40k + 10k CIFAR).
The bundled source classifier trained on `SOURCE_CLASSES`
is backbone ``micro-source`` (`madapt.backbones.classifier.load_micro_source`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from madapt.data import synthetic as syn
from madapt.errors import DataError, UnknownNameError, closest

SOURCE_CLASSES: tuple[str, ...] = (
    *(f"{c} {s}" for s in syn.SHAPES for c in syn.COLOURS),
    *(f"letter {ch}" for ch in syn.LETTERS),
    *(f"digit {d}" for d in range(10)),
)
LOWER = tuple(ch.lower() for ch in syn.LETTERS)
MICRO_TARGETS: dict[str, tuple[str, ...]] = {
    "digits": syn.NUMBERS,
    "letters": LOWER,
    "shapes": syn.SHAPES,
    "textures": tuple(syn.TEXTURES),
}
_SPLITS = ("train", "test", "val")  # the index of a split keys its random stream
# sklearn digit writers: the train split never shares an image with the test split
_DIGIT_RANGES = {"train": (0, 1200), "val": (0, 1200), "test": (1200, 1797)}


def _source_image(p: Any, rng: np.random.Generator, label: int) -> np.ndarray:
    texture, colour = syn._pick(rng, syn.TEXTURES), syn._pick(rng, syn.COLOURS)
    if label < 80:
        shape, colour = syn.SHAPES[label // 10], list(syn.COLOURS)[label % 10]
        return syn._objects(p, rng, shapes=[shape], colours=[colour], texture=texture)
    char = syn.LETTERS[label - 80] if label < 106 else str(label - 106)
    alpha = p.glyph(syn._pick(rng, syn.PRETRAIN_FONTS), char, int(rng.integers(14, 25)))
    return syn._glyph_image(p, rng, alpha, colour, texture, False)


def _target_image(p: Any, rng: np.random.Generator, name: str, label: int, split: str) -> np.ndarray:
    colour, texture = syn._pick(rng, syn.COLOURS), syn._pick(rng, syn.TEXTURES)
    if name == "digits":
        lo, hi = _DIGIT_RANGES[split]
        index = lo + int(rng.choice(np.flatnonzero(p.handwritten.target[lo:hi] == label)))
        alpha = p.handwritten_digit(index, int(rng.integers(18, 27)))
        return syn._glyph_image(p, rng, alpha, colour, texture, paper=True)
    if name == "letters":
        alpha = p.glyph(syn._pick(rng, syn.HELDOUT_FONTS), LOWER[label], int(rng.integers(14, 25)))
        return syn._glyph_image(p, rng, alpha, colour, texture, paper=False)
    if name == "shapes":
        return syn._objects(
            p, rng, shapes=[syn.SHAPES[label]], colours=[colour], texture=texture, heldout="rotate colour"
        )
    return syn._Scene(p, rng, list(syn.TEXTURES)[label], True).done()


def _render(
    n_classes: int,
    per_class: int,
    rng: np.random.Generator,
    draw: Callable[[Any, np.random.Generator, int], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    painter = syn._Painter()  # glyph cache local to this call
    images = np.stack([draw(painter, rng, int(y)) for y in labels])
    return images, labels.astype(np.int64)


def source_split(split: str, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced source images (uint8 N × 32 × 32 × 3, int64 labels over `SOURCE_CLASSES`)."""
    _check_split("micro source", split, per_class)
    rng = np.random.default_rng([seed, 1000, _SPLITS.index(split)])
    return _render(len(SOURCE_CLASSES), per_class, rng, _source_image)


def micro_split(name: str, split: str, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced images of micro target ``name``; train and test use disjoint random streams."""
    if name not in MICRO_TARGETS:
        raise UnknownNameError(
            f"micro VP dataset '{name}'",
            "is not a known dataset" + closest(name, MICRO_TARGETS),
            "one of: " + ", ".join(MICRO_TARGETS),
        )
    _check_split(f"micro VP dataset '{name}'", split, per_class)
    rng = np.random.default_rng([seed, list(MICRO_TARGETS).index(name), _SPLITS.index(split)])
    return _render(
        len(MICRO_TARGETS[name]), per_class, rng, lambda p, r, y: _target_image(p, r, name, y, split)
    )


def _check_split(where: str, split: str, per_class: int) -> None:
    if split not in _SPLITS:
        raise DataError(where, f"split '{split}'", "'train', 'val' or 'test'")
    if per_class < 1:
        raise DataError(where, f"per_class={per_class}", "at least one image per class")


class ImageArray(Dataset):
    """uint8 (N, H, W, 3) images -> float (3, H, W) in [0, 1]; normalising is the prompt's job."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.targets = [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch by fancy indexing (much faster than a DataLoader for in-memory arrays)."""
        return self.images[index].float().div_(255.0), torch.as_tensor(self.targets)[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255.0), self.targets[i]


@dataclass
class TargetData:
    """A downstream task: class names and the train/test (and validation) datasets of [0, 1] images."""

    name: str
    classnames: list[str]
    train: Dataset
    test: Dataset
    val: Dataset | None = None  # selects the reported epoch (best validation accuracy); never test

    @property
    def train_labels(self) -> np.ndarray:
        return np.asarray(self.train.targets, dtype=np.int64)


def load_micro(
    name: str, train_per_class: int, test_per_class: int, seed: int = 0, val_per_class: int = 0
) -> TargetData:
    """Micro target ``name`` with the given images per class (no validation split when 0)."""
    train = ImageArray(*micro_split(name, "train", train_per_class, seed))
    test = ImageArray(*micro_split(name, "test", test_per_class, seed))
    val = ImageArray(*micro_split(name, "val", val_per_class, seed)) if val_per_class else None
    return TargetData(name, list(MICRO_TARGETS[name]), train, test, val)


# Bahng et al. resize to 256 and centre-crop 224: the crop keeps 87.5 % of the shorter side.
BAHNG_CROP = 224 / 256


class _Resize:
    """Resize a PIL image to ``size`` × ``size`` unless it already is (CIFAR and SVHN stay native,
    as ILM-VP's ToTensor-only pipeline keeps them). A class so DataLoader workers can pickle it."""

    def __init__(self, size: int) -> None:
        from torchvision import transforms

        self.size, self.resize = size, transforms.Resize((size, size))

    def __call__(self, image: Any) -> Any:
        return image if tuple(image.size) == (self.size, self.size) else self.resize(image)


def image_transform(image_size: int, center_crop: bool) -> Callable[[Any], torch.Tensor]:
    """PIL image -> float (3, image_size, image_size) in [0, 1], the one resize of each recipe.

    ``center_crop``: Bahng et al.'s ``Resize(256)`` (shorter side) + ``CenterCrop(224)``, scaled to
    ``image_size`` (VPT evaluates the same way); else ILM-VP's ``Resize((s, s))`` to the prompt's
    image side. Normalising is the prompt's job; no augmentation, as in both recipes, which also
    keeps the extra mapping pass of ILM / OTLM deterministic.
    """
    from torchvision import transforms

    if center_crop:
        resize = transforms.Resize(round(image_size / BAHNG_CROP))
        return transforms.Compose([resize, transforms.CenterCrop(image_size), transforms.ToTensor()])
    return transforms.Compose([_Resize(image_size), transforms.ToTensor()])


def load_folder(data_root: str | Path, name: str, transform: Callable[[Any], Any]) -> TargetData:
    """ImageFolder dataset ``data_root/<name>/{train,test[,val]}/<class>/*`` through ``transform``."""
    from torchvision import datasets

    layout = f"{data_root}/{name}/{{train,test}}/<class>/<image> (optionally val/ too)"
    root = Path(data_root) / name
    if not Path(data_root).is_dir():
        raise DataError(f"data_root '{data_root}'", "does not exist", f"a folder laid out as {layout}")
    splits = {}
    for split in _SPLITS:
        folder = root / split
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        if not classes and split == "val":
            continue
        if not classes:
            raise DataError(
                f"dataset '{name}' split '{split}'", f"no class folders in {folder}", f"the layout {layout}"
            )
        try:
            splits[split] = datasets.ImageFolder(str(folder), transform=transform)  # loader converts to RGB
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(
                f"dataset '{name}' split '{split}'",
                str(err).splitlines()[0][:120],
                f"images in the layout {layout}",
            ) from None
        if splits[split].classes != splits["train"].classes:
            raise DataError(
                f"dataset '{name}'",
                f"train and {split} have different class folders",
                f"the same class folder names in train/ and {split}/",
            )
    return TargetData(name, list(splits["train"].classes), splits["train"], splits["test"], splits.get("val"))


def holdout(data: TargetData, n_val: int, seed: int = 0) -> TargetData:
    """``data`` with ``n_val`` training images moved to a validation split, stratified by class
    (scikit-learn's ``train_test_split``, fixed ``seed`` so every run and mapper sees the same
    split). Table 6.2: CIFAR's 50,000 training images become 40,000 train + 10,000 validation."""
    from sklearn.model_selection import train_test_split

    from madapt.data.mtil import LabeledDataset

    labels = np.asarray(data.train.targets)
    if not 0 < n_val < len(labels):
        raise DataError(
            f"dataset '{data.name}'",
            f"{len(labels)} training images",
            f"more than the {n_val} held out for validation",
        )
    # stratified whenever it can be (every class with two images or more: all of Table 6.2)
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if counts.min() >= 2 and n_val >= len(counts) else None
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=n_val, stratify=stratify, random_state=seed
    )
    parts = [
        LabeledDataset(
            data.name,
            data.train,
            sorted(int(i) for i in idx),
            [int(labels[i]) for i in sorted(idx)],
            data.classnames,
        )
        for idx in (train_idx, val_idx)
    ]
    return TargetData(data.name, data.classnames, parts[0], data.test, parts[1])


def subsample_per_class(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices keeping ``fraction`` of each class, at least one image (Table 6.10's 100 %…0.1 %)."""
    rng = np.random.default_rng([seed, 6010])
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(fraction * len(idx)))
        keep.append(np.sort(rng.choice(idx, size=k, replace=False)))
    return np.sort(np.concatenate(keep))
