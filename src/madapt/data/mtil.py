"""Real-data loaders for the MTIL benchmark (11 datasets) and the CIL datasets, ZSCL's protocol.

Seed 000 §3.5 / §4.5 and seed 002 §5 follow ZSCL (`mtil/src/datasets/collections.py`): every
dataset is read by its torchvision class with ``download=False`` from one ``data_root``, so the
on-disk layout is torchvision's (see `expected_layout`). Splits:

- official train/test for Aircraft (``train``, not ``trainval``), DTD (partition 1), Flowers102,
  Food-101, MNIST, Stanford Cars, CIFAR-100; Oxford Pets ``trainval``/``test``;
- Caltech101, EuroSAT and SUN397 have no official split: ZSCL's ``split_dataset`` —
  ``train = int(0.8 * n)``, ``test = n - train``, ``random_split`` with
  ``torch.Generator().manual_seed(42)``.

Every split comes back as a `LabeledDataset` yielding ``(RGB image or transform(image), label)``
with ``.targets`` and ``.classnames``. Each dataset is registered as ``dataset`` ``mtil/<key>``
(plus ``cil/cifar100`` and ``cil/tinyimagenet``); the builder returns its `DatasetSpec`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, random_split
from torchvision import datasets as tvd
from torchvision.datasets.utils import download_and_extract_archive

from madapt.data.cil import TinyImageNet200
from madapt.data.fewshot import labels_of
from madapt.data.templates import CLASSNAMES, N_CLASSES, TEMPLATES
from madapt.errors import ConfigError, DataError, UnknownNameError, closest
from madapt.registry import register

Transform = Callable[[Any], Any] | None

ORDER_I: tuple[str, ...] = (
    "aircraft",
    "caltech101",
    "cifar100",
    "dtd",
    "eurosat",
    "flowers",
    "food",
    "mnist",
    "oxford_pet",
    "stanford_cars",
    "sun397",
)
ORDER_II: tuple[str, ...] = (
    "stanford_cars",
    "food",
    "mnist",
    "oxford_pet",
    "flowers",
    "sun397",
    "aircraft",
    "caltech101",
    "dtd",
    "eurosat",
    "cifar100",
)
SPLITS = ("train", "test")
SPLIT_SEED = 42
# The archive the CS231n course distributes (the reference repos read its extracted folder).
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TRAIN_FRACTION = 0.8


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where it lives under ``data_root``, its classes, prompts and how to open it."""

    name: str  # registry name, e.g. "mtil/dtd"
    key: str  # key into templates.py, e.g. "dtd"
    folder: str  # folder directly under data_root
    layout: str  # expected layout, one line, paths relative to data_root
    required: tuple[str, ...]  # paths (relative to data_root) that must exist
    random_split: bool = False  # ZSCL's seed-42 80/20 split instead of an official one
    templates_key: str = ""  # templates.py key when it differs from `key`

    @property
    def n_classes(self) -> int:
        return N_CLASSES[self.key]

    @property
    def templates(self) -> list[str]:
        return list(TEMPLATES[self.templates_key or self.key])

    @property
    def classnames(self) -> list[str] | None:
        """Fixed class names, or None when they are read from the files (`LabeledDataset`)."""
        fixed = CLASSNAMES.get(self.key)
        return list(fixed) if fixed is not None else None

    def load(
        self,
        data_root: str | Path,
        split: str,
        transform: Transform = None,
    ) -> LabeledDataset:
        return load_split(self.name, data_root, split, transform)


class LabeledDataset(Dataset):
    """A split of a dataset: ``base[indices[i]]`` with its labels and class names at hand."""

    def __init__(
        self, name: str, base: Dataset, indices: list[int], targets: list[int], classnames: list[str]
    ) -> None:
        self.name, self.base, self.indices = name, base, indices
        self.targets, self.classnames = targets, classnames

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, _ = self.base[self.indices[i]]
        return image, self.targets[i]


class _RGBThen:
    """Converts PIL images to RGB before ``transform``: MNIST is "L", some Caltech101 images are
    greyscale, and CLIP's preprocessing expects three channels. A class, not a lambda, so that
    DataLoader workers can pickle it."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> Any:
        image = image.convert("RGB") if hasattr(image, "convert") else image
        return self.transform(image) if self.transform is not None else image


class _SortedSUN397(tvd.SUN397):
    """torchvision's SUN397 with its files sorted: it lists them with ``rglob``, whose order
    depends on the filesystem, and the seed-42 split must pick the same images everywhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pairs = sorted(zip(self._image_files, self._labels))
        self._image_files = [p for p, _ in pairs]
        self._labels = [y for _, y in pairs]


def _open(
    key: str, root: Path, split: str, tf: Any, download: bool = False
) -> tuple[Dataset, list[str] | None]:
    """The torchvision dataset of ``key`` and its class names on disk (None for Flowers102, whose
    files hold no names). Runs never download; only `download` (``madapt data download``) does."""
    train = split == "train"
    dl = {"download": download}
    if key == "aircraft":
        ds: Any = tvd.FGVCAircraft(root, split=split, annotation_level="variant", transform=tf, **dl)
    elif key == "caltech101":
        ds = tvd.Caltech101(root, target_type="category", transform=tf, **dl)
        return ds, ds.categories
    elif key == "cifar100":
        ds = tvd.CIFAR100(root, train=train, transform=tf, **dl)
    elif key == "dtd":
        ds = tvd.DTD(root, split=split, partition=1, transform=tf, **dl)
    elif key == "eurosat":
        ds = tvd.EuroSAT(root, transform=tf, **dl)
    elif key == "flowers":
        return tvd.Flowers102(root, split=split, transform=tf, **dl), None
    elif key == "food":
        ds = tvd.Food101(root, split=split, transform=tf, **dl)
    elif key == "mnist":
        ds = tvd.MNIST(root, train=train, transform=tf, **dl)
    elif key == "oxford_pet":
        ds = tvd.OxfordIIITPet(root, split="trainval" if train else "test", transform=tf, **dl)
    elif key == "stanford_cars":
        ds = tvd.StanfordCars(root, split=split, transform=tf, **dl)
    elif key == "sun397":
        ds = _SortedSUN397(root, transform=tf, **dl)
    else:
        if download and not (root / "tiny-imagenet-200").is_dir():
            download_and_extract_archive(TINYIMAGENET_URL, str(root), md5=TINYIMAGENET_MD5)
        ds = TinyImageNet200(root / "tiny-imagenet-200", split, transform=tf)
    return ds, [str(c) for c in ds.classes]


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "mtil/aircraft",
            "aircraft",
            "fgvc-aircraft-2013b",
            "fgvc-aircraft-2013b/data/{variants.txt, images_variant_train.txt, "
            "images_variant_test.txt ('<image id> <variant>' lines), images/<image id>.jpg}",
            (
                "fgvc-aircraft-2013b/data/variants.txt",
                "fgvc-aircraft-2013b/data/images",
                "fgvc-aircraft-2013b/data/images_variant_train.txt",
                "fgvc-aircraft-2013b/data/images_variant_test.txt",
            ),
        ),
        DatasetSpec(
            "mtil/caltech101",
            "caltech101",
            "caltech101",
            "caltech101/101_ObjectCategories/<category>/image_0001.jpg ... (102 folders including "
            "BACKGROUND_Google, which is ignored)",
            ("caltech101/101_ObjectCategories",),
            random_split=True,
        ),
        DatasetSpec(
            "mtil/cifar100",
            "cifar100",
            "cifar-100-python",
            "cifar-100-python/{train, test, meta} (the python pickle batches of "
            "cifar-100-python.tar.gz, md5-checked by torchvision)",
            ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        ),
        DatasetSpec(
            "mtil/dtd",
            "dtd",
            "dtd",
            "dtd/dtd/{images/<class>/<name>.jpg, labels/train1.txt, labels/test1.txt "
            "('<class>/<name>.jpg' lines)}",
            ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/test1.txt"),
        ),
        DatasetSpec(
            "mtil/eurosat",
            "eurosat",
            "eurosat",
            "eurosat/2750/<Class>/<Class>_<n>.jpg (10 class folders: AnnualCrop, Forest, ...)",
            ("eurosat/2750",),
            random_split=True,
        ),
        DatasetSpec(
            "mtil/flowers",
            "flowers",
            "flowers-102",
            "flowers-102/{jpg/image_00001.jpg ..., imagelabels.mat, setid.mat} (.mat files "
            "md5-checked by torchvision)",
            ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
        ),
        DatasetSpec(
            "mtil/food",
            "food",
            "food-101",
            "food-101/{meta/train.json, meta/test.json ({class: ['<class>/<id>', ...]}), "
            "images/<class>/<id>.jpg}",
            ("food-101/meta/train.json", "food-101/meta/test.json", "food-101/images"),
        ),
        DatasetSpec(
            "mtil/mnist",
            "mnist",
            "MNIST",
            "MNIST/raw/{" + ", ".join(_MNIST_FILES) + "} (uncompressed idx files)",
            tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
        ),
        DatasetSpec(
            "mtil/oxford_pet",
            "oxford_pet",
            "oxford-iiit-pet",
            "oxford-iiit-pet/{images/<Breed>_<n>.jpg, annotations/trainval.txt, "
            "annotations/test.txt ('<image id> <class id> <species> <breed id>' lines)}",
            (
                "oxford-iiit-pet/images",
                "oxford-iiit-pet/annotations/trainval.txt",
                "oxford-iiit-pet/annotations/test.txt",
            ),
        ),
        DatasetSpec(
            "mtil/stanford_cars",
            "stanford_cars",
            "stanford_cars",
            "stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/*.jpg, "
            "cars_test/*.jpg, cars_test_annos_withlabels.mat}",
            (
                "stanford_cars/devkit/cars_meta.mat",
                "stanford_cars/devkit/cars_train_annos.mat",
                "stanford_cars/cars_train",
                "stanford_cars/cars_test",
                "stanford_cars/cars_test_annos_withlabels.mat",
            ),
        ),
        DatasetSpec(
            "mtil/sun397",
            "sun397",
            "SUN397",
            "SUN397/{ClassName.txt ('/a/abbey' lines), <letter>/<class>[/<sub>]/sun_*.jpg}",
            ("SUN397/ClassName.txt",),
            random_split=True,
        ),
        DatasetSpec(
            "cil/cifar100",
            "cifar100",
            "cifar-100-python",
            "cifar-100-python/{train, test, meta} (the python pickle batches of "
            "cifar-100-python.tar.gz, md5-checked by torchvision)",
            ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
            templates_key="cil_cifar100",
        ),
        DatasetSpec(
            "cil/tinyimagenet",
            "tinyimagenet",
            "tiny-imagenet-200",
            "tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
            "val/val_annotations.txt ('<file>\\t<wnid>\\t...' lines)}",
            (
                "tiny-imagenet-200/wnids.txt",
                "tiny-imagenet-200/words.txt",
                "tiny-imagenet-200/train",
                "tiny-imagenet-200/val/images",
                "tiny-imagenet-200/val/val_annotations.txt",
            ),
            templates_key="cil_tinyimagenet",
        ),
    )
}


def _register(spec: DatasetSpec) -> None:
    def build() -> DatasetSpec:
        """The `DatasetSpec`; images come from ``spec.load(data_root, split, transform)``."""
        return spec

    register("dataset", spec.name)(build)


for _spec in SPECS.values():
    _register(_spec)


def spec_of(name: str) -> DatasetSpec:
    """The spec for ``"mtil/dtd"``, ``"cil/tinyimagenet"`` or a short key like ``"dtd"``."""
    for candidate in (name, f"mtil/{name}", f"cil/{name}"):
        if candidate in SPECS:
            return SPECS[candidate]
    known = sorted(SPECS) + sorted({s.key for s in SPECS.values()})
    raise UnknownNameError(
        f"dataset '{name}'",
        "is not a known real dataset" + closest(name, known),
        "one of: " + ", ".join(sorted(SPECS)),
    )


def expected_layout(name: str) -> str:
    """One line describing the files ``name`` needs under ``data_root``."""
    return f"<data_root>/{spec_of(name).layout}"


def _fail(spec: DatasetSpec, where: Path, found: str) -> DataError:
    return DataError(f"dataset '{spec.name}' at {where}", found, f"<data_root>/{spec.layout}")


def _missing(spec: DatasetSpec, root: Path) -> Path | None:
    """The first required path that does not exist (the dataset folder itself first)."""
    for rel in (spec.folder, *spec.required):
        if not (root / rel).exists():
            return root / rel
    return None


def check_root(
    data_root: str | Path, expected: str = "a folder holding the dataset folders (see `madapt data check`)"
) -> Path:
    """``data_root`` as a Path; `DataError` (naming it and ``expected``) unless it is a folder."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"data_root {root}", "does not exist or is not a folder", expected)
    return root


def load_split(
    name: str,
    data_root: str | Path,
    split: str,
    transform: Transform = None,
) -> LabeledDataset:
    """``split`` ("train" or "test") of dataset ``name`` under ``data_root``, ZSCL's protocol.

    Raises `DataError` for a missing data_root, dataset folder or file, a file torchvision
    cannot read, an empty split, or a class count / class list that differs from the spec.
    """
    spec = spec_of(name)
    if split not in SPLITS:
        raise ConfigError(
            f"split of dataset '{spec.name}'", f"is '{split}'", "'train' or 'test'" + closest(split, SPLITS)
        )
    root = check_root(data_root)
    missing = _missing(spec, root)
    if missing is not None:
        found = "folder is missing" if missing == root / spec.folder else "is missing"
        raise _fail(spec, missing, found)
    try:
        base, disk_names = _open(spec.key, root, split, _RGBThen(transform))
    except (RuntimeError, OSError, KeyError, ValueError, IndexError) as err:
        raise _fail(spec, root / spec.folder, f"cannot be read ({type(err).__name__}: {err})") from err
    labels = labels_of(base)
    indices = list(range(len(labels)))
    if spec.random_split:
        n_train = int(TRAIN_FRACTION * len(labels))
        parts = random_split(
            base, [n_train, len(labels) - n_train], generator=torch.Generator().manual_seed(SPLIT_SEED)
        )
        indices = list(parts[SPLITS.index(split)].indices)
    if not indices:
        raise _fail(spec, root / spec.folder, f"split '{split}' is empty")
    classnames = _check_classes(spec, root, disk_names, labels)
    return LabeledDataset(spec.name, base, indices, [labels[i] for i in indices], classnames)


def _check_classes(
    spec: DatasetSpec, root: Path, disk_names: list[str] | None, labels: list[int]
) -> list[str]:
    """Class names for the spec, after checking the data on disk agrees with it."""
    where = root / spec.folder
    if disk_names is None and max(labels) >= spec.n_classes:
        raise _fail(spec, where, f"has label {max(labels)} but the spec has {spec.n_classes} classes")
    if disk_names is not None and len(disk_names) != spec.n_classes:
        raise _fail(spec, where, f"has {len(disk_names)} classes but the spec has {spec.n_classes}")
    disk = [n.replace("_", " ") for n in disk_names] if disk_names is not None else None
    fixed = spec.classnames
    if fixed is None:
        assert disk is not None
        return disk
    # Lists copied from torchvision's own `.classes` must match the files exactly; the
    # hand-written CLIP names (Caltech101, EuroSAT, Flowers) are only checked by count.
    if spec.key in ("cifar100", "dtd", "mnist") and disk is not None and disk != fixed:
        first = next(i for i, (a, b) in enumerate(zip(disk, fixed)) if a != b)
        raise _fail(spec, where, f"class {first} is '{disk[first]}' but the spec says '{fixed[first]}'")
    return fixed


def class_names(name: str, data_root: str | Path | None = None) -> list[str]:
    """Class names of ``name``: the fixed list, or read from the train split under data_root."""
    spec = spec_of(name)
    if spec.classnames is not None:
        return spec.classnames
    if data_root is None:
        raise DataError(
            f"class names of dataset '{spec.name}'",
            "need the data (no data_root)",
            f"data_root holding <data_root>/{spec.layout}",
        )
    return load_split(spec.name, data_root, "train").classnames


def check_layout(
    collection: str,
    data_root: str | Path,
    deep: bool = False,
) -> list[tuple[str, bool, str]]:
    """``(dataset, ok, message)`` for every dataset of ``"mtil"`` or ``"cil"`` under data_root.

    Checks that the files of `expected_layout` exist; ``deep=True`` also loads both splits and
    checks sizes and classes (slow on the full datasets).
    """
    if collection not in ("mtil", "cil"):
        raise ConfigError(
            f"data collection '{collection}'",
            "is unknown",
            "'mtil' or 'cil'" + closest(collection, ("mtil", "cil")),
        )
    root = check_root(data_root)
    rows: list[tuple[str, bool, str]] = []
    for spec in SPECS.values():
        if not spec.name.startswith(collection + "/"):
            continue
        missing = _missing(spec, root)
        if missing is not None:
            rows.append((spec.name, False, f"missing {missing}; expected {root}/{spec.layout}"))
            continue
        message = f"found {root / spec.folder}"
        try:
            if deep:
                sizes = [len(load_split(spec.name, root, s)) for s in SPLITS]
                message += f" (train {sizes[0]}, test {sizes[1]} images)"
        except DataError as err:
            rows.append((spec.name, False, err.one_line()))
            continue
        rows.append((spec.name, True, message))
    return rows


def download(
    collection: str,
    data_root: str | Path,
    only: list[str] | None = None,
    report: Callable[[str, bool, str], None] | None = None,
) -> list[tuple[str, bool, str]]:
    """Fetch the missing datasets of ``collection`` into ``data_root`` with torchvision's own
    downloaders (for users who are online; `load_split` never downloads). Datasets already present
    are left alone. Returns ``(dataset, ok, message)`` rows; a failed download (no network, a URL
    torchvision no longer supports, e.g. Stanford Cars) says where to put the files by hand.
    """
    if collection not in ("mtil", "cil"):
        raise ConfigError(
            f"data collection '{collection}'",
            "is unknown",
            "'mtil' or 'cil'" + closest(collection, ("mtil", "cil")),
        )
    specs = [s for s in SPECS.values() if s.name.startswith(collection + "/")]
    keys = [s.key for s in specs]
    for name in only or []:
        if name not in keys:
            raise UnknownNameError(
                f"--only {name}",
                f"is not a {collection} dataset" + closest(name, keys),
                "one of: " + ", ".join(keys),
            )
    root = Path(data_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in specs:
        if only and spec.key not in only:
            continue
        if _missing(spec, root) is None:
            row = (spec.name, True, f"already present in {root / spec.folder}")
        else:
            before = set(root.iterdir())
            try:
                for split in SPLITS:
                    _open(spec.key, root, split, None, download=True)
                missing = _missing(spec, root)
                row = (
                    (spec.name, True, f"downloaded to {root / spec.folder}")
                    if missing is None
                    else (spec.name, False, f"downloaded, but {missing} is missing")
                )
            except Exception as err:  # network, checksum or unsupported-URL errors of torchvision
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                for new in set(root.iterdir()) - before:  # empty folders a failed attempt left behind
                    if new.is_dir() and not any(f.is_file() for f in new.rglob("*")):
                        shutil.rmtree(new)
                row = (
                    spec.name,
                    False,
                    f"download failed ({reason}); place it by hand as {root}/{spec.layout}",
                )
        rows.append(row)
        if report:
            report(*row)
    return rows
