"""torchvision-format VP datasets: CIFAR-10, SVHN and GTSRB opened here; CIFAR-100, DTD, Flowers102,
Food-101 and Stanford Cars through `madapt.data.mtil` (one data_root serves MTIL and VP)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from madapt.data import mtil
from madapt.data.fewshot import labels_of
from madapt.data.vp import TargetData
from madapt.data.vp_real.common import SPLITS, Plan, Transform, first_missing, unreadable
from madapt.errors import DataError

# The 43 sign classes of the GTSRB benchmark in class-id order (the dataset's sign-name list; its
# files hold only the ids 00000..00042).
GTSRB_CLASSES: tuple[str, ...] = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)
SVHN_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))  # torchvision maps label 10 to 0

_CIFAR10_FILES = tuple(
    f"cifar-10-batches-py/{f}"
    for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
)


def torchvision_plan(
    root: Path,
    name: str,
    folder: str,
    required: Sequence[str],
    layout: str,
    opener: Callable[[Path, str, Transform], tuple[Dataset, list[int], list[str]]],
) -> Plan:
    missing = first_missing(root, (folder, *required))
    if missing is not None:
        return Plan(layout, missing=missing)

    def load(tf: Transform) -> TargetData:
        parts = {}
        for split in SPLITS:
            try:
                base, labels, names = opener(root, split, mtil._RGBThen(tf))
            except (RuntimeError, OSError, ValueError, KeyError, IndexError) as err:
                raise unreadable(name, root / folder, err, layout) from None
            if not labels:
                raise DataError(f"dataset '{name}' at {root / folder}", f"split '{split}' is empty", layout)
            parts[split] = mtil.LabeledDataset(name, base, list(range(len(labels))), labels, names)
        return TargetData(name, list(parts["train"].classnames), parts["train"], parts["test"])

    return Plan(layout, load=load, found=f"torchvision layout in {root / folder}")


def _open_cifar10(root: Path, split: str, tf: Transform) -> tuple[Dataset, list[int], list[str]]:
    ds = tvd.CIFAR10(root, train=split == "train", transform=tf, download=False)
    return ds, labels_of(ds), [str(c) for c in ds.classes]


def _open_svhn(root: Path, split: str, tf: Transform) -> tuple[Dataset, list[int], list[str]]:
    # SVHN reads root/<split>_32x32.mat with no folder of its own: ours is data_root/svhn
    ds = tvd.SVHN(root / "svhn", split=split, transform=tf, download=False)
    return ds, [int(y) for y in np.asarray(ds.labels).ravel()], list(SVHN_CLASSES)


def _open_gtsrb(root: Path, split: str, tf: Transform) -> tuple[Dataset, list[int], list[str]]:
    training = root / "gtsrb" / "GTSRB" / "Training"
    folders = sorted(d.name for d in training.iterdir() if d.is_dir())
    expected = [f"{i:05d}" for i in range(len(GTSRB_CLASSES))]
    if folders != expected:
        # torchvision numbers the class folders in sorted order: a missing folder would shift every
        # later label and pair images with the wrong sign names
        odd = sorted(set(folders) ^ set(expected))
        raise ValueError(
            f"{training} has {len(folders)} class folders (first difference: {odd[0]}), "
            "not exactly 00000..00042"
        )
    ds = tvd.GTSRB(root, split=split, transform=tf, download=False)
    labels = labels_of(ds)
    if labels and max(labels) >= len(GTSRB_CLASSES):
        raise ValueError(f"GT-final_test.csv has ClassId {max(labels)}, beyond 42")
    return ds, labels, list(GTSRB_CLASSES)


TORCHVISION: dict[str, tuple[str, tuple[str, ...], str, Any]] = {
    "cifar10": (
        "cifar-10-batches-py",
        _CIFAR10_FILES,
        (
            "<data_root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python "
            "batches of cifar-10-python.tar.gz, md5-checked by torchvision)"
        ),
        _open_cifar10,
    ),
    "svhn": (
        "svhn",
        ("svhn/train_32x32.mat", "svhn/test_32x32.mat"),
        (
            "<data_root>/svhn/{train_32x32.mat, test_32x32.mat} (SVHN format 2, as torchvision SVHN "
            "reads them, md5-checked)"
        ),
        _open_svhn,
    ),
    "gtsrb": (
        "gtsrb",
        ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
        (
            "<data_root>/gtsrb/{GTSRB/Training/<00000..00042>/*.ppm, GTSRB/Final_Test/Images/*.ppm, "
            "GT-final_test.csv} (GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip and "
            "GTSRB_Final_Test_GT.zip extracted into gtsrb/, as torchvision GTSRB reads them)"
        ),
        _open_gtsrb,
    ),
}

# preset name -> the MTIL spec whose torchvision reader and class names are reused as they are
MTIL: dict[str, str] = {
    "cifar100": "mtil/cifar100",
    "dtd": "mtil/dtd",
    "flowers102": "mtil/flowers",
    "food101": "mtil/food",
    "stanford_cars": "mtil/stanford_cars",
}


# DTD partition 1's val1 and Flowers' ``valid`` ids (1,880 and 1,020 images, Table 6.2)
OFFICIAL_VAL = {"dtd": "dtd/dtd/labels/val1.txt", "flowers102": "flowers-102/setid.mat"}


def mtil_plan(root: Path, name: str) -> Plan:
    spec = mtil.SPECS[MTIL[name]]
    layout = f"<data_root>/{spec.layout}"
    missing = mtil._missing(spec, root)
    if missing is not None:
        return Plan(layout, missing=missing)

    def load(tf: Transform) -> TargetData:
        # official splits and the MTIL class names (DTD partition 1, Flowers' CLIP names, ...)
        train, test = (mtil.load_split(spec.name, root, split, tf) for split in SPLITS)
        val = None
        if name in OFFICIAL_VAL and (root / OFFICIAL_VAL[name]).is_file():  # Table 6.2's val sets
            try:
                base, _ = mtil._open(spec.key, root, "val", mtil._RGBThen(tf))
            except (RuntimeError, OSError, ValueError, KeyError, IndexError) as err:
                raise unreadable(name, root / spec.folder, err, layout) from None
            labels = labels_of(base)
            val = mtil.LabeledDataset(name, base, list(range(len(labels))), labels, list(train.classnames))
        return TargetData(name, list(train.classnames), train, test, val)

    return Plan(layout, load=load, found=f"torchvision layout in {root / spec.folder}")
