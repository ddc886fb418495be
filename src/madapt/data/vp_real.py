"""Real target datasets of visual prompting, read in their standard on-disk layouts (seed 000 ch. 6).

Seed §6.5.1.4 / Table 6.2 name the targets: DTD, CUB-200-2011, NABirds, Stanford Dogs, Oxford
Flowers, Food-101, CIFAR-10/100, GTSRB and SVHN under the VP framework, and the five FGVC datasets
of VPT (CUB, NABirds, Flowers, Dogs, Stanford Cars) under VPT. `load_real(data_root, name, size)`
reads preset name ``name`` from ``data_root`` and never downloads:

- torchvision datasets, opened by their torchvision class with ``download=False`` and their
  dataset folder directly under data_root, named as torchvision names it (the convention of
  `madapt.data.mtil`, so one data_root serves MTIL and VP). CIFAR-100, DTD, Flowers102, Food-101
  and Stanford Cars go through `mtil.load_split` itself; CIFAR-10, SVHN and GTSRB are opened here.
- FGVC datasets: VPT's split files ``{train,val,test}.json`` (KMnP/vpt
  ``src/data/datasets/json_dataset.py``: ``{image path: class id}``, paths relative to
  ``get_imagedir()`` = ``images/`` for CUB and NABirds, ``Images/`` for Dogs, the dataset folder for
  Flowers and Cars; class ids made contiguous in sorted order) when present in the dataset folder
  (VPT's split README places them in the official folders), else the official layouts
  (CUB_200_2011 / NABirds text files, Stanford Dogs' ``{train,test}_list.mat``).
- fallback: the ImageFolder tree ``data_root/<name>/{train,test}/<class>/*`` (`vp.load_folder`),
  used when the standard layout is incomplete and ``data_root/<name>/train`` exists; other names
  only read that tree.

Splits: a run trains on "train" and reports "test"; the validation sets of Table 6.2 are the
reference repos' hyper-parameter splits and are not read.

============== ============================================ ======================================
name           train                                        test
============== ============================================ ======================================
cifar10        5 data batches (50,000; Table 6.2's 40k+10k)  test_batch (10,000)
cifar100       train (50,000)                               test (10,000)
svhn           train_32x32.mat (73,257 = 58,605 + 14,652)   test_32x32.mat (26,032); extra unused
gtsrb          GTSRB/Training (26,640)                      Final_Test + GT-final_test.csv (12,630)
dtd            partition 1 ``train1`` (1,880 = Table 6.2)   ``test1`` (1,880); val1 unused
flowers102     ``trnid`` (1,020)                            ``tstid`` (6,149)
food101        meta/train.json (75,750)                     meta/test.json (25,250)
cub200         train.json (5,394) | is_training_image=1     test.json | is_training_image=0 (5,794)
nabirds        train.json (21,536) | official train         test.json | official test (24,633)
stanford_dogs  train.json (10,800) | train_list.mat          test.json | test_list.mat (8,580)
stanford_cars  train.json (7,329) | torchvision train        test.json | torchvision test (8,041)
============== ============================================ ======================================

DTD: train1 only, not train1 + val1, matching Table 6.2's 1,880 (ILM-VP / CoOp train on a train
split too). The json counts are VPT's (Table 6.2's train column); the official layouts have no
validation split, so their train split is VPT's train + val.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.datasets.folder import default_loader

from madapt.data import mtil
from madapt.data.fewshot import labels_of
from madapt.data.templates import CLASSNAMES
from madapt.data.vp import TargetData, load_folder, resize_to_tensor
from madapt.errors import DataError

Transform = Callable[[Any], Any]
SPLITS = ("train", "test")
ROOT_EXPECTED = "a folder holding the VP datasets in their standard layouts (madapt.data.vp_real)"

# The 43 sign classes of the GTSRB benchmark in class-id order (the dataset's sign-name list; its
# files hold only the ids 00000..00042).
GTSRB_CLASSES: tuple[str, ...] = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)",
    "Speed limit (100km/h)", "Speed limit (120km/h)", "No passing",
    "No passing for vehicles over 3.5 metric tons", "Right-of-way at the next intersection",
    "Priority road", "Yield", "Stop", "No vehicles", "Vehicles over 3.5 metric tons prohibited",
    "No entry", "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right", "Road work",
    "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing", "Beware of ice/snow",
    "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead",
    "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left", "Keep right",
    "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)
SVHN_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))  # torchvision maps label 10 to 0

_CIFAR10_FILES = tuple(f"cifar-10-batches-py/{f}" for f in (*(f"data_batch_{i}" for i in range(1, 6)),
                                                                "test_batch", "batches.meta"))


class ImageFiles(Dataset):
    """Images listed by path: ``(transform(RGB image), label)``, with ``targets`` and ``classnames``.

    torchvision's ``default_loader`` converts to RGB (CUB and Dogs hold some greyscale / CMYK
    JPEGs), as VPT's ``JSONDataset`` does.
    """

    def __init__(self, name: str, paths: list[str], targets: list[int], classnames: list[str],
                 transform: Transform) -> None:
        self.name, self.paths, self.targets = name, paths, targets
        self.classnames, self.transform = classnames, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(default_loader(self.paths[i])), self.targets[i]


@dataclass
class _Plan:
    """How ``name`` would be read from data_root: a loader when its layout is complete."""

    layout: str                                    # the expected layout, one line
    load: Callable[[Transform], TargetData] | None = None
    missing: Path | None = None                    # first missing path of the layout
    found: str = ""                                # what was found (for `check_layout`)


# ---------------------------------------------------------------------------------------------
# torchvision datasets


def _torchvision_plan(root: Path, name: str, folder: str, required: Sequence[str], layout: str,
                      opener: Callable[[Path, str, Transform], tuple[Dataset, list[int], list[str]]],
                      ) -> _Plan:
    missing = _first_missing(root, (folder, *required))
    if missing is not None:
        return _Plan(layout, missing=missing)

    def load(tf: Transform) -> TargetData:
        parts = {}
        for split in SPLITS:
            try:
                base, labels, names = opener(root, split, mtil._RGBThen(tf))
            except (RuntimeError, OSError, ValueError, KeyError, IndexError) as err:
                raise _unreadable(name, root / folder, err, layout) from None
            if not labels:
                raise DataError(f"dataset '{name}' at {root / folder}", f"split '{split}' is empty", layout)
            parts[split] = mtil.LabeledDataset(name, base, list(range(len(labels))), labels, names)
        return TargetData(name, list(parts["train"].classnames), parts["train"], parts["test"])

    return _Plan(layout, load=load, found=f"torchvision layout in {root / folder}")


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
        raise ValueError(f"{training} has {len(folders)} class folders (first difference: {odd[0]}), "
                         "not exactly 00000..00042")
    ds = tvd.GTSRB(root, split=split, transform=tf, download=False)
    labels = labels_of(ds)
    if labels and max(labels) >= len(GTSRB_CLASSES):
        raise ValueError(f"GT-final_test.csv has ClassId {max(labels)}, beyond 42")
    return ds, labels, list(GTSRB_CLASSES)


_TORCHVISION: dict[str, tuple[str, tuple[str, ...], str, Any]] = {
    "cifar10": ("cifar-10-batches-py", _CIFAR10_FILES,
                ("<data_root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python "
                 "batches of cifar-10-python.tar.gz, md5-checked by torchvision)"), _open_cifar10),
    "svhn": ("svhn", ("svhn/train_32x32.mat", "svhn/test_32x32.mat"),
             ("<data_root>/svhn/{train_32x32.mat, test_32x32.mat} (SVHN format 2, as torchvision SVHN "
              "reads them, md5-checked)"), _open_svhn),
    "gtsrb": ("gtsrb", ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
              ("<data_root>/gtsrb/{GTSRB/Training/<00000..00042>/*.ppm, GTSRB/Final_Test/Images/*.ppm, "
               "GT-final_test.csv} (GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip and "
               "GTSRB_Final_Test_GT.zip extracted into gtsrb/, as torchvision GTSRB reads them)"), _open_gtsrb),
}

# preset name -> the MTIL spec whose torchvision reader and class names are reused as they are
_MTIL: dict[str, str] = {
    "cifar100": "mtil/cifar100", "dtd": "mtil/dtd", "flowers102": "mtil/flowers", "food101": "mtil/food",
    "stanford_cars": "mtil/stanford_cars",
}


def _mtil_plan(root: Path, name: str) -> _Plan:
    spec = mtil.SPECS[_MTIL[name]]
    layout = f"<data_root>/{spec.layout}"
    missing = mtil._missing(spec, root)
    if missing is not None:
        return _Plan(layout, missing=missing)

    def load(tf: Transform) -> TargetData:
        # official splits and the MTIL class names (DTD partition 1, Flowers' CLIP names, ...)
        train, test = (mtil.load_split(spec.name, root, split, tf) for split in SPLITS)
        return TargetData(name, list(train.classnames), train, test)

    return _Plan(layout, load=load, found=f"torchvision layout in {root / spec.folder}")


# ---------------------------------------------------------------------------------------------
# FGVC datasets: VPT's json split files or the official layouts


@dataclass(frozen=True)
class _Fgvc:
    archive: str | None          # folder the official archive extracts to, also looked up
    image_dir: str               # VPT ``get_imagedir()``, relative to the dataset folder
    layout: str                  # the official layout, one line, relative to the dataset folder
    official: tuple[str, ...]    # files of the official layout (first = marker), or () for torchvision
    fixed_names: Callable[[Path, int], list[str] | None] | None = None  # json mode, shared image folder


def _flowers_names(folder: Path, n: int) -> list[str] | None:
    # VPT's Flowers json keeps images in one folder (jpg/): the CLIP names follow the class ids
    return list(CLASSNAMES["flowers"]) if n == len(CLASSNAMES["flowers"]) else None


def _cars_names(folder: Path, n: int) -> list[str] | None:
    # VPT's Cars json keeps images in cars_{train,test}/: names from the devkit, in class-id order
    meta = folder / "devkit" / "cars_meta.mat"
    if not meta.is_file():
        return None
    names = [str(np.asarray(c).ravel()[0]) for c in _loadmat(meta)["class_names"].ravel()]
    return names if len(names) == n else None


_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")
_FGVC: dict[str, _Fgvc] = {
    "cub200": _Fgvc("CUB_200_2011", "images",
                    "{images/<class>/<image>.jpg, images.txt, image_class_labels.txt, train_test_split.txt, "
                    "classes.txt} (CUB_200_2011.tgz's CUB_200_2011 folder; also looked up as "
                    "<data_root>/CUB_200_2011 and <data_root>/cub200/CUB_200_2011)", _CUB_FILES),
    "nabirds": _Fgvc("nabirds", "images",
                     "{images/<class id>/<image>.jpg, images.txt, image_class_labels.txt, "
                     "train_test_split.txt, classes.txt} (nabirds.tar.gz extracted; also looked up as "
                     "<data_root>/nabirds/nabirds)", _CUB_FILES),
    "stanford_dogs": _Fgvc(None, "Images",
                           "{Images/<wnid>-<breed>/<image>.jpg, train_list.mat, test_list.mat} (images.tar and "
                           "lists.tar extracted)", ("train_list.mat", "test_list.mat", "Images")),
    "flowers102": _Fgvc(None, ".", "", (), _flowers_names),
    "stanford_cars": _Fgvc(None, ".", "", (), _cars_names),
}


def _fgvc_layout(name: str, spec: _Fgvc) -> str:
    if not spec.official:  # the torchvision layout of MTIL, or VPT's json splits beside the images
        return (f"<data_root>/{mtil.SPECS[_MTIL[name]].layout}, or <data_root>/{name}/ holding VPT's split "
                "files {train,val,test}.json ({image path relative to that folder: class id})")
    return (f"<data_root>/{name}/{spec.layout}, optionally with VPT's split files {{train,val,test}}.json "
            f"({{image path under {spec.image_dir}/: class id}})")


def _candidates(root: Path, name: str, spec: _Fgvc) -> list[Path]:
    """Existing folders that may hold the dataset: data_root/<name>, then the archive's own folder."""
    paths = [root / name]
    if spec.archive:
        paths += [root / name / spec.archive, root / spec.archive]
    seen: list[Path] = []
    for p in paths:
        if p.is_dir() and p not in seen:
            seen.append(p)
    return seen


def _fgvc_plan(root: Path, name: str) -> _Plan:
    spec = _FGVC[name]
    layout = _fgvc_layout(name, spec)
    folders = _candidates(root, name, spec)
    for folder in folders:
        if (folder / "train.json").is_file():
            missing = _first_missing(folder, ("test.json", spec.image_dir))
            if missing is not None:
                return _Plan(layout, missing=missing)
            return _Plan(layout, load=lambda tf, f=folder: _read_vpt_json(name, f, spec, tf, layout),
                         found=f"VPT json splits in {folder}")
    if not spec.official:  # no json splits: torchvision's layout through MTIL, both named on error
        plan = _mtil_plan(root, name)
        plan.layout = layout
        return plan
    for folder in folders:
        if (folder / spec.official[0]).is_file():
            missing = _first_missing(folder, spec.official)
            if missing is not None:
                return _Plan(layout, missing=missing)
            reader = _read_dogs if name == "stanford_dogs" else _read_cub_style
            return _Plan(layout, load=lambda tf, f=folder, read=reader: read(name, f, tf, layout),
                         found=f"official layout in {folder}")
    return _Plan(layout, missing=_first_missing(root / name, spec.official))


def _read_vpt_json(name: str, folder: Path, spec: _Fgvc, tf: Transform, layout: str) -> TargetData:
    """VPT's ``{image path: class id}`` splits; ids -> 0..K-1 in sorted order, as ``JSONDataset`` maps
    them (it does so per split; here over train and test together, so both agree on every id)."""
    entries = {split: _json_split(name, folder / f"{split}.json", layout) for split in SPLITS}
    _check_disjoint(name, folder / "train.json", folder / "test.json", entries["train"], entries["test"], layout)
    ids = sorted({cid for split in SPLITS for _, cid in entries[split]})
    contiguous = {cid: i for i, cid in enumerate(ids)}
    image_dir = folder / spec.image_dir
    names = _names_from_folders(name, folder, ids, [(rel, cid) for s in SPLITS for rel, cid in entries[s]])
    if names is None and spec.fixed_names is not None:
        names = spec.fixed_names(folder, len(ids))
    if names is None:
        names = [f"class {cid}" for cid in ids]  # VPT's files carry ids only
    parts = {split: _image_files(name, image_dir, [(rel, contiguous[cid]) for rel, cid in entries[split]],
                                 names, tf, folder / f"{split}.json", layout)
             for split in SPLITS}
    return TargetData(name, names, parts["train"], parts["test"])


def _read_cub_style(name: str, folder: Path, tf: Transform, layout: str) -> TargetData:
    """CUB-200-2011 / NABirds: ``<image id> <path>`` (images.txt), ``<image id> <class id>``
    (image_class_labels.txt), ``<image id> <1|0>`` (train_test_split.txt, 1 = train) and
    ``<class id> <name>`` (classes.txt). Class ids are mapped to 0..K-1 in sorted id order: NABirds'
    555 leaf ids are not contiguous and its classes.txt also lists the inner hierarchy nodes."""
    images = _id_lines(name, folder / "images.txt", layout)
    labels = dict(_id_lines(name, folder / "image_class_labels.txt", layout))
    is_train = dict(_id_lines(name, folder / "train_test_split.txt", layout))
    classes = {_int(name, folder / "classes.txt", k, layout): v
               for k, v in _id_lines(name, folder / "classes.txt", layout)}
    rows: list[tuple[str, int, str]] = []
    for image_id, rel in images:
        for table, file in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DataError(f"dataset '{name}' file {folder / file}", f"has no line for image id {image_id}",
                                f"one line per image of images.txt; layout {layout}")
        if is_train[image_id] not in ("0", "1"):
            raise DataError(f"dataset '{name}' file {folder / 'train_test_split.txt'}",
                            f"has '{is_train[image_id]}' for image id {image_id}", "1 (train) or 0 (test)")
        split = "train" if is_train[image_id] == "1" else "test"
        rows.append((rel, _int(name, folder / "image_class_labels.txt", labels[image_id], layout), split))
    ids = sorted({cid for _, cid, _ in rows})
    unnamed = [cid for cid in ids if cid not in classes]
    if unnamed:
        raise DataError(f"dataset '{name}' file {folder / 'classes.txt'}", f"has no name for class id {unnamed[0]}",
                        f"a '<class id> <name>' line for every class of image_class_labels.txt; layout {layout}")
    names = [_readable(classes[cid]) for cid in ids]
    contiguous = {cid: i for i, cid in enumerate(ids)}
    parts = {split: _image_files(name, folder / "images", [(r, contiguous[c]) for r, c, s in rows if s == split],
                                 names, tf, folder / "images.txt", layout)
             for split in SPLITS}
    return TargetData(name, names, parts["train"], parts["test"])


def _read_dogs(name: str, folder: Path, tf: Transform, layout: str) -> TargetData:
    """Stanford Dogs: ``file_list`` (``<wnid>-<breed>/<image>.jpg``) and 1-based ``labels`` of
    {train,test}_list.mat; breed names from the image folders (``n02085620-Chihuahua``)."""
    entries: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        mat_path = folder / f"{split}_list.mat"
        try:
            mat = _loadmat(mat_path)
            files = [str(np.asarray(f).ravel()[0]) for f in np.asarray(mat["file_list"]).ravel()]
            labels = [int(y) for y in np.asarray(mat["labels"]).ravel()]
        except (MatReadError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise _unreadable(name, mat_path, err, layout) from None
        if len(files) != len(labels):
            raise DataError(f"dataset '{name}' file {mat_path}", f"has {len(files)} files but {len(labels)} labels",
                            f"one label per file; layout {layout}")
        entries[split] = list(zip(files, labels))
    _check_disjoint(name, folder / "train_list.mat", folder / "test_list.mat", entries["train"], entries["test"],
                    layout)
    ids = sorted({y for split in SPLITS for _, y in entries[split]})
    names = _names_from_folders(name, folder, ids, [e for s in SPLITS for e in entries[s]])
    if names is None:
        raise DataError(f"dataset '{name}' at {folder}", "a label's images are spread over several breed folders",
                        f"one Images/<wnid>-<breed>/ folder per label; layout {layout}")
    contiguous = {cid: i for i, cid in enumerate(ids)}
    parts = {split: _image_files(name, folder / "Images", [(rel, contiguous[y]) for rel, y in entries[split]],
                                 names, tf, folder / f"{split}_list.mat", layout)
             for split in SPLITS}
    return TargetData(name, names, parts["train"], parts["test"])


# ---------------------------------------------------------------------------------------------
# helpers


def _first_missing(folder: Path, relative: Iterable[str]) -> Path | None:
    if not folder.is_dir():
        return folder
    for rel in relative:
        if not (folder / rel).exists():
            return folder / rel
    return None


def _unreadable(name: str, where: Path, err: BaseException, layout: str) -> DataError:
    first = (str(err).strip().splitlines() or [""])[0][:160]
    return DataError(f"dataset '{name}' at {where}", f"cannot be read ({type(err).__name__}: {first})",
                     layout)


def _loadmat(path: Path) -> dict[str, Any]:
    return scipy.io.loadmat(str(path))


def _int(name: str, file: Path, value: str, layout: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"dataset '{name}' file {file}", f"has '{value}' where a class id belongs",
                        f"integer class ids; layout {layout}") from None


def _id_lines(name: str, file: Path, layout: str) -> list[tuple[str, str]]:
    """``<id> <value>`` lines (the value may hold spaces, as NABirds' class names do)."""
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"dataset '{name}' file {file}", f"line {number} is '{line.strip()[:60]}'",
                            f"'<id> <value>' lines; layout {layout}")
        rows.append((parts[0], parts[1].strip()))
    return rows


def _json_split(name: str, file: Path, layout: str) -> list[tuple[str, int]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _unreadable(name, file, err, layout) from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"dataset '{name}' file {file}", "is not a non-empty JSON object",
                        f"VPT's {{image path: class id}} split; layout {layout}")
    rows = []
    for rel, cid in data.items():
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(f"dataset '{name}' file {file}", f"maps '{rel}' to {cid!r}",
                            f"an integer class id per image path (VPT's json splits); layout {layout}")
        rows.append((str(rel), cid))
    return rows


def _check_disjoint(name: str, train_file: Path, test_file: Path, train: list[tuple[str, int]],
                    test: list[tuple[str, int]], layout: str) -> None:
    """The formats split disjointly; a shared image means a wrong or hand-edited split file."""
    shared = {rel for rel, _ in train} & {rel for rel, _ in test}
    if shared:
        raise DataError(f"dataset '{name}' files {train_file} and {test_file}",
                        f"share {len(shared)} images (e.g. {min(shared)})", f"disjoint splits; layout {layout}")


def _readable(raw: str) -> str:
    """Class name for reports: CUB's ``001.Black_footed_Albatross`` and Dogs' ``n02085620-Chihuahua``
    lose their numbering, underscores become spaces."""
    return re.sub(r"^(\d+\.|n\d{8}-)", "", raw).replace("_", " ").strip()


def _names_from_folders(name: str, folder: Path, ids: list[int], pairs: list[tuple[str, int]],
                        ) -> list[str] | None:
    """Names from the folder each class's images sit in, when that folder is one per class.

    NABirds folders are class ids (``0295``): their names come from classes.txt when it is there.
    Returns None when images of several classes share folders (Flowers' ``jpg/``, Cars).
    """
    by_class: dict[int, set[str]] = {}
    for rel, cid in pairs:
        parent = Path(rel).parent.name
        by_class.setdefault(cid, set()).add(parent)
    folders = [by_class.get(cid, set()) for cid in ids]
    if any(len(f) != 1 for f in folders) or len({next(iter(f)) for f in folders}) != len(ids):
        return None
    raw = [next(iter(f)) for f in folders]
    table = folder / "classes.txt"
    if all(r.isdigit() for r in raw) and table.is_file():
        lookup = {int(k): v for k, v in _id_lines(name, table, "'<class id> <name>' lines") if k.isdigit()}
        return [_readable(lookup.get(int(r), r)) for r in raw]
    return [_readable(r) for r in raw]


def _image_files(name: str, image_dir: Path, rows: list[tuple[str, int]], names: list[str],
                 tf: Transform, listed_in: Path, layout: str) -> ImageFiles:
    """The split as `ImageFiles`, after checking every listed image exists (a missing one is a
    one-line error now rather than a crash inside a DataLoader worker hours later)."""
    if not rows:
        raise DataError(f"dataset '{name}' file {listed_in}", "lists no image for this split", layout)
    paths = [image_dir / rel for rel, _ in rows]
    for path in paths:
        if not path.is_file():
            raise DataError(f"dataset '{name}' image {path}", f"is missing (listed in {listed_in.name})", layout)
    return ImageFiles(name, [str(p) for p in paths], [y for _, y in rows], names, tf)


# ---------------------------------------------------------------------------------------------
# public entry points

VP_DATASETS: tuple[str, ...] = (
    "cifar10", "cifar100", "svhn", "gtsrb", "dtd", "flowers102", "food101", "cub200", "nabirds",
    "stanford_dogs", "stanford_cars",
)


def _plan(root: Path, name: str) -> _Plan | None:
    if name in _FGVC:
        return _fgvc_plan(root, name)
    if name in _TORCHVISION:
        folder, required, layout, opener = _TORCHVISION[name]
        return _torchvision_plan(root, name, folder, required, layout, opener)
    if name in _MTIL:
        return _mtil_plan(root, name)
    return None


def _folder_tree(name: str) -> str:
    return f"<data_root>/{name}/{{train,test}}/<class>/<image>"


def load_real(data_root: str | Path, name: str, image_size: int) -> TargetData:
    """Target dataset ``name`` (a preset's ``data.name``) from ``data_root``, images resized to
    ``image_size`` (`vp.resize_to_tensor`); see the module docstring for layouts and splits.

    Raises `DataError` naming the first missing file of the standard layout (when the ImageFolder
    fallback ``data_root/<name>/train`` is absent too), an unreadable file, a split file that
    contradicts the others, or a listed image that is missing. Nothing is written to disk.
    """
    root = mtil.check_root(data_root, ROOT_EXPECTED)
    plan = _plan(root, name)
    if plan is not None and plan.load is not None:
        return plan.load(resize_to_tensor(image_size))
    if plan is None or (root / name / "train").is_dir():
        return load_folder(root, name, image_size)
    raise DataError(f"dataset '{name}'", f"{plan.missing} is missing",
                    f"{plan.layout}; or the folder tree {_folder_tree(name)}")


def expected_layout(name: str) -> str:
    """One line: the standard layout of ``name`` (or its ImageFolder tree for other names)."""
    plan = _plan(Path("<data_root>"), name)
    tree = _folder_tree(name)
    return tree if plan is None else f"{plan.layout}; or the folder tree {tree}"


def check_layout(data_root: str | Path, names: Sequence[str] = VP_DATASETS) -> list[tuple[str, bool, str]]:
    """``(dataset, ok, message)`` per VP dataset: which layout `load_real` would read, or what is
    missing. Same rows as `mtil.check_layout` (for a ``madapt data check vp``); reads no image."""
    root = mtil.check_root(data_root, ROOT_EXPECTED)
    rows: list[tuple[str, bool, str]] = []
    for name in names:
        plan = _plan(root, name)
        if plan is not None and plan.load is not None:
            rows.append((name, True, f"found {plan.found}"))
        elif (root / name / "train").is_dir():
            rows.append((name, True, f"found ImageFolder tree {root / name}"))
        else:
            missing = plan.missing if plan is not None else root / name / "train"
            rows.append((name, False, f"missing {missing}; expected {expected_layout(name)}"))
    return rows
