"""Class-incremental learning (CIL) protocol: class orders, step splits, class-subset views.

Seed 000 §3.5.1.1 (following Douillard et al. 2022 / DyTox, as ZSCL's `cil/` does): CIFAR-100 is
split evenly into 10, 20 or 50 steps; TinyImageNet learns 100 classes in a base step and splits
the other 100 into 5, 10 or 20 steps. The fixed class orders are the ones the reference CIL code
reads (`class_orders/cifar100.yaml` = the iCaRL/PODNet order, `class_orders/tinyimagenet.yaml`),
and a step's classes are ``order[:base]`` then consecutive chunks of ``increment`` (ZSCL
`continual_clip/utils.py::get_class_ids_per_task`).

Also holds the TinyImageNet-200 reader (the standard `tiny-imagenet-200` folder; torchvision has
none), because only the CIL protocol uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from madapt.errors import ConfigError, DataError

CIFAR100_ORDER: tuple[int, ...] = (
    87,
    0,
    52,
    58,
    44,
    91,
    68,
    97,
    51,
    15,
    94,
    92,
    10,
    72,
    49,
    78,
    61,
    14,
    8,
    86,
    84,
    96,
    18,
    24,
    32,
    45,
    88,
    11,
    4,
    67,
    69,
    66,
    77,
    47,
    79,
    93,
    29,
    50,
    57,
    83,
    17,
    81,
    41,
    12,
    37,
    59,
    25,
    20,
    80,
    73,
    1,
    28,
    6,
    46,
    62,
    82,
    53,
    9,
    31,
    75,
    38,
    63,
    33,
    74,
    27,
    22,
    36,
    3,
    16,
    21,
    60,
    19,
    70,
    90,
    89,
    43,
    5,
    42,
    65,
    76,
    40,
    30,
    23,
    85,
    2,
    95,
    56,
    48,
    71,
    64,
    98,
    13,
    99,
    7,
    34,
    55,
    54,
    26,
    35,
    39,
)

TINYIMAGENET_ORDER: tuple[int, ...] = (
    131,
    181,
    22,
    172,
    144,
    92,
    97,
    187,
    58,
    93,
    6,
    70,
    106,
    68,
    153,
    168,
    179,
    199,
    29,
    46,
    9,
    142,
    134,
    88,
    193,
    110,
    26,
    32,
    117,
    112,
    17,
    39,
    166,
    13,
    94,
    138,
    109,
    147,
    51,
    101,
    59,
    188,
    116,
    5,
    170,
    99,
    100,
    167,
    180,
    146,
    65,
    1,
    104,
    43,
    38,
    184,
    123,
    171,
    137,
    162,
    71,
    44,
    95,
    174,
    12,
    7,
    54,
    152,
    21,
    47,
    28,
    176,
    34,
    2,
    132,
    118,
    42,
    189,
    150,
    14,
    165,
    41,
    192,
    45,
    82,
    128,
    63,
    57,
    197,
    160,
    53,
    75,
    108,
    135,
    121,
    159,
    183,
    67,
    169,
    50,
    87,
    69,
    89,
    196,
    115,
    19,
    148,
    96,
    86,
    11,
    8,
    60,
    33,
    173,
    78,
    4,
    119,
    105,
    182,
    127,
    177,
    30,
    186,
    40,
    49,
    178,
    76,
    157,
    161,
    73,
    164,
    151,
    31,
    74,
    191,
    27,
    125,
    198,
    81,
    20,
    155,
    114,
    139,
    36,
    61,
    56,
    145,
    48,
    16,
    83,
    62,
    85,
    126,
    0,
    102,
    23,
    3,
    140,
    15,
    195,
    133,
    113,
    190,
    141,
    52,
    163,
    156,
    80,
    111,
    90,
    175,
    143,
    120,
    84,
    18,
    25,
    79,
    37,
    154,
    136,
    64,
    158,
    24,
    185,
    72,
    35,
    129,
    55,
    149,
    91,
    122,
    77,
    103,
    124,
    130,
    66,
    10,
    107,
    194,
    98,
)

# (dataset, number of incremental steps) -> (n_classes, base, increment, class order).
# "cifar100/10" = ZSCL `cifar100_10-10`; "tinyimagenet/10" = ZSCL `tinyimagenet_100-10`.
CIL_SETTINGS: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "cifar100/10": (100, 10, 10, CIFAR100_ORDER),
    "cifar100/20": (100, 5, 5, CIFAR100_ORDER),
    "cifar100/50": (100, 2, 2, CIFAR100_ORDER),
    "tinyimagenet/5": (200, 100, 20, TINYIMAGENET_ORDER),
    "tinyimagenet/10": (200, 100, 10, TINYIMAGENET_ORDER),
    "tinyimagenet/20": (200, 100, 5, TINYIMAGENET_ORDER),
}


def cil_steps(
    n_classes: int,
    base: int,
    increment: int | None = None,
    n_steps: int | None = None,
    class_order: Sequence[int] | None = None,
) -> list[list[int]]:
    """Original class ids learned at each step: ``order[:base]``, then chunks of ``increment``.

    Give either ``increment`` or ``n_steps`` (the number of steps after the base step, which
    must split the remaining classes evenly). ``base=0`` means no separate base step.
    """
    order = list(range(n_classes)) if class_order is None else [int(c) for c in class_order]
    if sorted(order) != list(range(n_classes)):
        raise ConfigError(
            "class_order",
            f"is not a permutation of 0..{n_classes - 1}",
            f"each of the {n_classes} class ids exactly once",
        )
    if not 0 <= base < n_classes:
        raise ConfigError("base", f"is {base}", f"0 <= base < {n_classes} (number of classes)")
    rest = n_classes - base
    if (increment is None) == (n_steps is None):
        raise ConfigError("increment / n_steps", "both or neither given", "exactly one of them")
    if n_steps is not None:
        if n_steps <= 0 or rest % n_steps:
            raise ConfigError(
                "n_steps", f"is {n_steps}", f"a positive divisor of the {rest} classes after the base step"
            )
        increment = rest // n_steps
    assert increment is not None
    if increment <= 0:
        raise ConfigError("increment", f"is {increment}", "a positive number of classes per step")
    steps = [order[:base]] if base else []
    steps += [order[i : i + increment] for i in range(base, n_classes, increment)]
    return steps


def cil_protocol(setting: str) -> list[list[int]]:
    """Steps of a named setting, e.g. ``"cifar100/10"`` or ``"tinyimagenet/20"``."""
    if setting not in CIL_SETTINGS:
        raise ConfigError(f"cil setting '{setting}'", "is unknown", "one of " + ", ".join(CIL_SETTINGS))
    n, base, inc, order = CIL_SETTINGS[setting]
    return cil_steps(n, base, increment=inc, class_order=order)


class ClassSubset(Dataset):
    """The samples of ``dataset`` whose class is in ``classes``, relabelled by ``class_order``.

    As in the reference (continuum's ClassIncremental with a class order), label = position of
    the original class in ``class_order``, so the classes seen so far are always ``0..k-1`` and
    ``classnames`` lists them in that order.
    """

    def __init__(
        self,
        dataset: Dataset,
        labels: Sequence[int],
        classes: Sequence[int],
        class_order: Sequence[int],
        classnames: Sequence[str] | None = None,
    ) -> None:
        position = {int(c): i for i, c in enumerate(class_order)}
        keep = {int(c) for c in classes}
        self.dataset = dataset
        self.indices = [i for i, y in enumerate(labels) if int(y) in keep]
        self.targets = [position[int(labels[i])] for i in self.indices]
        n_seen = max(position[c] for c in keep) + 1 if keep else 0
        self.classnames = [classnames[c] for c in class_order[:n_seen]] if classnames is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, _ = self.dataset[self.indices[i]]
        return image, self.targets[i]


class TinyImageNet200(Dataset):
    """`tiny-imagenet-200` as distributed: labels = index of the wnid in sorted `wnids.txt`.

    train: ``train/<wnid>/images/*.JPEG``; test: ``val/images/*.JPEG`` labelled by
    ``val/val_annotations.txt`` (the official test folder has no labels). Class names are the
    first synonym in ``words.txt``. Sorting matches continuum/MoE-Adapters' label order.
    """

    def __init__(self, folder: Path, split: str, transform: Callable[[Any], Any] | None = None) -> None:
        self.transform = transform
        wnids = sorted(
            line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()
        )
        index = {w: i for i, w in enumerate(wnids)}
        words: dict[str, str] = {}
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, names = line.partition("\t")
            if wnid in index:
                words[wnid] = names.split(",")[0].strip()
        self.classes = [words.get(w, w) for w in wnids]
        self.samples: list[tuple[Path, int]] = []
        if split == "train":
            for wnid in wnids:
                for path in sorted((folder / "train" / wnid / "images").glob("*.JPEG")):
                    self.samples.append((path, index[wnid]))
        else:
            annotations = folder / "val" / "val_annotations.txt"
            for line in annotations.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) < 2:
                    continue
                if parts[1] not in index:
                    raise DataError(
                        f"dataset 'cil/tinyimagenet' file {annotations}",
                        f"names wnid '{parts[1]}' that is not in wnids.txt",
                        "every annotated wnid listed in wnids.txt",
                    )
                self.samples.append((folder / "val" / "images" / parts[0], index[parts[1]]))
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            image = img.convert("RGB")
        return (self.transform(image) if self.transform else image), label
