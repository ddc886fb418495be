"""The official layouts of the CoOp datasets, read as CoOp's ``datasets/*.py`` read them.

FGVC-Aircraft (``images_variant_{train,val,test}.txt`` + ``variants.txt``) and ImageNet
(``images/train`` as train, ``images/val`` as test, names from CLIP's ``classnames.txt``) have no
split file in CoOp and are always read here. The other nine are read here only when their
``split_zhou_<Name>.json`` is absent, the way CoOp builds that file on its first run
(``read_and_split_data`` 50/20/30 per class for Caltech101, DTD, EuroSAT, Food101;
``split_trainval`` 80/20 of the official train list for Pets, Cars, SUN397, UCF101; Flowers' 50/20/30
of ``imagelabels.mat`` with ``cat_to_name.json``), with CoOp's class-name fixes. Deviations, kept:

- the shuffles use ``random.Random(SPLIT_SEED)`` (CoOp: whatever global ``random`` state its first
  run had), and folder listings are sorted (CoOp's ``listdir_nohidden`` keeps ``os.listdir`` order,
  which depends on the filesystem), so the generated split is reproducible but is not CoOp's
  published one: download the split file to compare numbers with papers;
- nothing is written into the data root (CoOp saves the generated split file there);
- only sub-folders count as classes of a ``<class>/<image>`` tree (CoOp would take a stray file
  as a class).

Each reader returns rows ``(path relative to the image folder, label, class name)`` per split.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path

import scipy.io
from scipy.io.matlab import MatReadError

from madapt.data.coop.specs import CALTECH_IGNORED, CALTECH_NEW_CNAMES, EUROSAT_NEW_CNAMES, CoopSpec
from madapt.errors import DataError

SPLIT_SEED = 1  # CoOp's first seed (scripts/coop/main.sh runs seeds 1, 2, 3)
Row = tuple[str, int, str]  # (path relative to the image folder, label, class name)


def layout_error(spec: CoopSpec, where: Path, found: str) -> DataError:
    return DataError(f"dataset '{spec.name}' at {where}", found, f"<root>/{spec.layout}")


def _lines(spec: CoopSpec, path: Path) -> list[str]:
    if not path.is_file():
        raise layout_error(spec, path, "is missing")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _entries(folder: Path, dirs: bool) -> list[str]:
    """Sorted non-hidden sub-folders (``dirs``) or entries of ``folder`` (Dassl ``listdir_nohidden``)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and (not dirs or e.is_dir()))


def _loadmat(spec: CoopSpec, path: Path) -> dict:
    if not path.is_file():
        raise layout_error(spec, path, "is missing")
    try:
        return scipy.io.loadmat(str(path))
    except (MatReadError, ValueError, OSError) as err:
        raise layout_error(spec, path, f"cannot be read as a .mat file ({err})") from err


def _split_trainval(
    spec: CoopSpec, rows: list[Row], rng: random.Random, where: Path
) -> tuple[list[Row], list[Row]]:
    """CoOp ``OxfordPets.split_trainval``: per label (first-appearance order) shuffle, 20 % to val."""
    tracker: dict[int, list[int]] = {}
    for i, (_, label, _) in enumerate(rows):
        tracker.setdefault(label, []).append(i)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * 0.2)
        if n_val == 0:
            raise layout_error(
                spec, where, f"class {label} has {len(idxs)} image(s): too few for a 20 % val part"
            )
        rng.shuffle(idxs)
        for n, i in enumerate(idxs):
            (val if n < n_val else train).append(rows[i])
    return train, val


def _split_50_20_30(
    spec: CoopSpec, groups: Iterable[tuple[int, str, list[str]]], rng: random.Random, where: Path
) -> tuple[list[Row], list[Row], list[Row]]:
    """CoOp ``read_and_split_data`` / Flowers ``read_data``: per class shuffle, then 50 % / 20 % / rest."""
    train: list[Row] = []
    val: list[Row] = []
    test: list[Row] = []
    for label, cname, paths in groups:
        rng.shuffle(paths)
        n_train, n_val = round(len(paths) * 0.5), round(len(paths) * 0.2)
        if min(n_train, n_val, len(paths) - n_train - n_val) <= 0:
            raise layout_error(
                spec, where, f"class '{cname}' has {len(paths)} image(s): too few for 50/20/30"
            )
        train += [(p, label, cname) for p in paths[:n_train]]
        val += [(p, label, cname) for p in paths[n_train : n_train + n_val]]
        test += [(p, label, cname) for p in paths[n_train + n_val :]]
    return train, val, test


def _class_folders(
    spec: CoopSpec, image_dir: Path, ignored: tuple[str, ...] = (), new_cnames: dict[str, str] | None = None
) -> list[tuple[int, str, list[str]]]:
    """``<image_dir>/<class>/<image>`` as (label, name, paths); labels follow the sorted folders."""
    folders = [c for c in _entries(image_dir, dirs=True) if c not in ignored]
    renames = new_cnames or {}
    return [
        (label, renames.get(c, c), [f"{c}/{im}" for im in _entries(image_dir / c, dirs=False)])
        for label, c in enumerate(folders)
    ]


# ---------------------------------------------------------------------------------------------
# official layouts (CoOp's fallback when no split file is present)


def _raw_folders(spec: CoopSpec, folder: Path, rng: random.Random) -> tuple[list[Row], ...]:
    """Caltech101, DTD, EuroSAT, Food101: a class-folder tree split 50/20/30 (with the name fixes)."""
    image_dir = folder / spec.image_dir
    if spec.name == "caltech101":
        groups = _class_folders(spec, image_dir, CALTECH_IGNORED, CALTECH_NEW_CNAMES)
    elif spec.name == "eurosat":
        groups = _class_folders(spec, image_dir, new_cnames=EUROSAT_NEW_CNAMES)
    else:
        groups = _class_folders(spec, image_dir)
    return _split_50_20_30(spec, groups, rng, image_dir)


def _raw_pets(spec: CoopSpec, folder: Path, rng: random.Random) -> tuple[list[Row], ...]:
    """``annotations/{trainval,test}.txt`` lines '<Breed>_<n> <class id> <species> <breed id>';
    the class name is the lowercased breed of the file name (``datasets/oxford_pets.py``)."""

    def read(split_file: str) -> list[Row]:
        rows = []
        for line in _lines(spec, folder / "annotations" / split_file):
            imname, label = line.split(" ")[:2]
            rows.append((imname + ".jpg", int(label) - 1, "_".join(imname.split("_")[:-1]).lower()))
        return rows

    trainval = read("trainval.txt")
    return (*_split_trainval(spec, trainval, rng, folder / "annotations" / "trainval.txt"), read("test.txt"))


def _raw_cars(spec: CoopSpec, folder: Path, rng: random.Random) -> tuple[list[Row], ...]:
    """Devkit .mat annotations; names from ``cars_meta.mat`` with the year moved to the front."""
    meta = _loadmat(spec, folder / "devkit" / "cars_meta.mat")["class_names"][0]

    def read(image_dir: str, anno_file: Path) -> list[Row]:
        rows = []
        for anno in _loadmat(spec, anno_file)["annotations"][0]:
            label = int(anno["class"][0, 0]) - 1
            words = str(meta[label][0]).split(" ")
            rows.append((f"{image_dir}/{anno['fname'][0]}", label, " ".join([words[-1], *words[:-1]])))
        return rows

    trainval = read("cars_train", folder / "devkit" / "cars_train_annos.mat")
    test = read("cars_test", folder / "cars_test_annos_withlabels.mat")
    return (*_split_trainval(spec, trainval, rng, folder / "devkit" / "cars_train_annos.mat"), test)


def _raw_flowers(spec: CoopSpec, folder: Path, rng: random.Random) -> tuple[list[Row], ...]:
    """``imagelabels.mat`` (1-based label of image_{i+1:05d}.jpg) and ``cat_to_name.json``."""
    names_file = folder / "cat_to_name.json"
    if not names_file.is_file():
        raise layout_error(spec, names_file, "is missing")
    lab2cname = json.loads(names_file.read_text(encoding="utf-8"))
    tracker: dict[int, list[str]] = {}
    for i, label in enumerate(_loadmat(spec, folder / "imagelabels.mat")["labels"][0]):
        tracker.setdefault(int(label), []).append(f"image_{i + 1:05d}.jpg")
    if missing := [y for y in tracker if str(y) not in lab2cname]:
        raise layout_error(spec, names_file, f"has no name for label {missing[0]}")
    groups = [(y - 1, lab2cname[str(y)], paths) for y, paths in tracker.items()]
    return _split_50_20_30(spec, groups, rng, folder / "imagelabels.mat")


def _raw_sun(spec: CoopSpec, folder: Path, rng: random.Random) -> tuple[list[Row], ...]:
    """``ClassName.txt`` ('/a/abbey') and ``{Training,Testing}_01.txt``; name = sub-folders reversed
    without the letter ('/b/bakery/shop' -> 'shop bakery', ``datasets/sun397.py``)."""
    cname2lab = {c[1:]: i for i, c in enumerate(_lines(spec, folder / "ClassName.txt"))}

    def read(text_file: str) -> list[Row]:
        rows = []
        for line in _lines(spec, folder / text_file):
            imname = line[1:]
            cls = os.path.dirname(imname)
            if cls not in cname2lab:
                raise layout_error(
                    spec, folder / text_file, f"lists '{line}' whose class is not in ClassName.txt"
                )
            rows.append((imname, cname2lab[cls], " ".join(cls.split("/")[1:][::-1])))
        return rows

    return (
        *_split_trainval(spec, read("Training_01.txt"), rng, folder / "Training_01.txt"),
        read("Testing_01.txt"),
    )


def _raw_ucf(spec: CoopSpec, folder: Path, rng: random.Random) -> tuple[list[Row], ...]:
    """``ucfTrainTestlist/classInd.txt`` + ``{train,test}list01.txt``; the middle frame of
    ``<Action>/<video>.avi`` is ``UCF-101-midframes/<Action_Split_At_Capitals>/<video>.jpg``."""
    lists = folder / "ucfTrainTestlist"
    cname2lab = {}
    for line in _lines(spec, lists / "classInd.txt"):
        label, cname = line.split(" ")
        cname2lab[cname] = int(label) - 1

    def read(text_file: str) -> list[Row]:
        rows = []
        for line in _lines(spec, lists / text_file):
            action, filename = line.split(" ")[0].split("/")
            if action not in cname2lab:
                raise layout_error(
                    spec, lists / text_file, f"lists action '{action}' that classInd.txt lacks"
                )
            renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
            rows.append((f"{renamed}/{filename.replace('.avi', '.jpg')}", cname2lab[action], renamed))
        return rows

    trainval = read("trainlist01.txt")
    return (*_split_trainval(spec, trainval, rng, lists / "trainlist01.txt"), read("testlist01.txt"))


def read_aircraft(spec: CoopSpec, folder: Path) -> tuple[list[Row], ...]:
    """``variants.txt`` gives the label order; ``images_variant_<split>.txt`` lines '<id> <variant>'."""
    cname2lab = {c: i for i, c in enumerate(_lines(spec, folder / "variants.txt"))}
    splits = []
    for split in ("train", "val", "test"):
        path, rows = folder / f"images_variant_{split}.txt", []
        for line in _lines(spec, path):
            imid, _, cname = line.partition(" ")
            if cname not in cname2lab:
                raise layout_error(spec, path, f"names variant '{cname}' that variants.txt lacks")
            rows.append((imid + ".jpg", cname2lab[cname], cname))
        splits.append(rows)
    return tuple(splits)


def read_imagenet(spec: CoopSpec, folder: Path) -> tuple[list[Row], list[Row]]:
    """``images/train`` and ``images/val`` (the test split), labels = sorted wnid folders."""
    names: dict[str, str] = {}
    for line in _lines(spec, folder / "classnames.txt"):
        wnid, _, cname = line.partition(" ")
        names[wnid] = cname
    out, wnids = [], None
    for split in ("train", "val"):
        split_dir = folder / "images" / split
        folders = _entries(split_dir, dirs=True)
        if wnids is not None and folders != wnids:
            raise layout_error(
                spec, split_dir, f"has {len(folders)} class folders that differ from images/train's"
            )
        wnids = folders
        if missing := [w for w in folders if w not in names]:
            raise layout_error(spec, folder / "classnames.txt", f"has no line for folder '{missing[0]}'")
        out.append(
            [
                (f"{split}/{w}/{im}", label, names[w])
                for label, w in enumerate(folders)
                for im in _entries(split_dir / w, dirs=False)
            ]
        )
    return out[0], out[1]


RAW_READERS = {
    "caltech101": _raw_folders,
    "dtd": _raw_folders,
    "eurosat": _raw_folders,
    "food101": _raw_folders,
    "oxford_pets": _raw_pets,
    "stanford_cars": _raw_cars,
    "oxford_flowers": _raw_flowers,
    "sun397": _raw_sun,
    "ucf101": _raw_ucf,
}
