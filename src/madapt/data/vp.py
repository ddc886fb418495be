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
reuses the painters of `madapt.data.synthetic`. Real datasets (seed Table 6.2) are read in their
standard on-disk layouts by `madapt.data.vp_real.load_real`; `load_folder` here is its fallback, an
ImageFolder tree ``data_root/<name>/{train,test}/<class>/*`` (e.g. splits exported to folders).
Both resize with `resize_to_tensor`. The bundled source classifier trained on `SOURCE_CLASSES`
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
_SPLITS = ("train", "test")
# sklearn digit writers: the train split never shares an image with the test split
_DIGIT_RANGES = {"train": (0, 1200), "test": (1200, 1797)}


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
        return syn._objects(p, rng, shapes=[syn.SHAPES[label]], colours=[colour], texture=texture,
                            heldout="rotate colour")
    return syn._Scene(p, rng, list(syn.TEXTURES)[label], True).done()


def _render(n_classes: int, per_class: int, rng: np.random.Generator,
            draw: Callable[[Any, np.random.Generator, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
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
        raise UnknownNameError(f"micro VP dataset '{name}'",
                               "is not a known dataset" + closest(name, MICRO_TARGETS),
                               "one of: " + ", ".join(MICRO_TARGETS))
    _check_split(f"micro VP dataset '{name}'", split, per_class)
    rng = np.random.default_rng([seed, list(MICRO_TARGETS).index(name), _SPLITS.index(split)])
    return _render(len(MICRO_TARGETS[name]), per_class, rng,
                   lambda p, r, y: _target_image(p, r, name, y, split))


def _check_split(where: str, split: str, per_class: int) -> None:
    if split not in _SPLITS:
        raise DataError(where, f"split '{split}'", "'train' or 'test'")
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
    """A downstream task: class names and the train/test datasets of [0, 1] images."""

    name: str
    classnames: list[str]
    train: Dataset
    test: Dataset

    @property
    def train_labels(self) -> np.ndarray:
        return np.asarray(self.train.targets, dtype=np.int64)


def load_micro(name: str, train_per_class: int, test_per_class: int, seed: int = 0) -> TargetData:
    """Micro target ``name`` with the given images per class."""
    train = ImageArray(*micro_split(name, "train", train_per_class, seed))
    test = ImageArray(*micro_split(name, "test", test_per_class, seed))
    return TargetData(name, list(MICRO_TARGETS[name]), train, test)


def resize_to_tensor(image_size: int) -> Callable[[Any], torch.Tensor]:
    """PIL image -> float (3, image_size, image_size) in [0, 1], for every real target dataset.

    A plain resize to the backbone's input side, no crop or augmentation: the prompt adds the
    backbone's normalisation (Bahng et al. add the prompt in normalised space, anchors §2), and a
    deterministic transform keeps the extra mapping pass of ILM / OTLM comparable across epochs.
    """
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])


def load_folder(data_root: str | Path, name: str, image_size: int) -> TargetData:
    """ImageFolder dataset ``data_root/<name>/{train,test}/<class>/*``, resized to ``image_size``."""
    from torchvision import datasets

    layout = f"{data_root}/{name}/{{train,test}}/<class>/<image>"
    root = Path(data_root) / name
    if not Path(data_root).is_dir():
        raise DataError(f"data_root '{data_root}'", "does not exist", f"a folder laid out as {layout}")
    splits = {}
    for split in _SPLITS:
        folder = root / split
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        if not classes:
            raise DataError(f"dataset '{name}' split '{split}'", f"no class folders in {folder}",
                            f"the layout {layout}")
        tf = resize_to_tensor(image_size)
        try:
            splits[split] = datasets.ImageFolder(str(folder), transform=tf)  # its loader converts to RGB
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"dataset '{name}' split '{split}'", str(err).splitlines()[0][:120],
                            f"images in the layout {layout}") from None
    if splits["train"].classes != splits["test"].classes:
        raise DataError(f"dataset '{name}'", "train and test have different class folders",
                        "the same class folder names in train/ and test/")
    return TargetData(name, list(splits["train"].classes), splits["train"], splits["test"])


def subsample_per_class(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices keeping ``fraction`` of each class, at least one image (Table 6.10's 100 %…0.1 %)."""
    rng = np.random.default_rng([seed, 6010])
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(np.sort(rng.choice(idx, size=k, replace=False)))
    return np.sort(np.concatenate(keep))
