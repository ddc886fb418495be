"""FGVC datasets of VP / VPT (CUB-200-2011, NABirds, Stanford Dogs, Flowers102, Stanford Cars):
VPT's ``{train,val,test}.json`` splits when present, else the official layouts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io.matlab import MatReadError

from madapt.data import mtil
from madapt.data.templates import CLASSNAMES
from madapt.data.vp import TargetData
from madapt.data.vp_real.common import (
    SPLITS,
    Plan,
    Transform,
    check_disjoint,
    first_missing,
    id_lines,
    image_files,
    json_split,
    loadmat,
    names_from_folders,
    readable,
    to_int,
    unreadable,
)
from madapt.data.vp_real.torchvision_sets import MTIL, mtil_plan
from madapt.errors import DataError


@dataclass(frozen=True)
class Fgvc:
    archive: str | None  # folder the official archive extracts to, also looked up
    image_dir: str  # VPT ``get_imagedir()``, relative to the dataset folder
    layout: str  # the official layout, one line, relative to the dataset folder
    official: tuple[str, ...]  # files of the official layout (first = marker), or () for torchvision
    fixed_names: Callable[[Path, int], list[str] | None] | None = None  # json mode, shared image folder


def _flowers_names(folder: Path, n: int) -> list[str] | None:
    # VPT's Flowers json keeps images in one folder (jpg/): the CLIP names follow the class ids
    return list(CLASSNAMES["flowers"]) if n == len(CLASSNAMES["flowers"]) else None


def _cars_names(folder: Path, n: int) -> list[str] | None:
    # VPT's Cars json keeps images in cars_{train,test}/: names from the devkit, in class-id order
    meta = folder / "devkit" / "cars_meta.mat"
    if not meta.is_file():
        return None
    names = [str(np.asarray(c).ravel()[0]) for c in loadmat(meta)["class_names"].ravel()]
    return names if len(names) == n else None


_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")
FGVC: dict[str, Fgvc] = {
    "cub200": Fgvc(
        "CUB_200_2011",
        "images",
        "{images/<class>/<image>.jpg, images.txt, image_class_labels.txt, train_test_split.txt, "
        "classes.txt} (CUB_200_2011.tgz's CUB_200_2011 folder; also looked up as "
        "<data_root>/CUB_200_2011 and <data_root>/cub200/CUB_200_2011)",
        _CUB_FILES,
    ),
    "nabirds": Fgvc(
        "nabirds",
        "images",
        "{images/<class id>/<image>.jpg, images.txt, image_class_labels.txt, "
        "train_test_split.txt, classes.txt} (nabirds.tar.gz extracted; also looked up as "
        "<data_root>/nabirds/nabirds)",
        _CUB_FILES,
    ),
    "stanford_dogs": Fgvc(
        None,
        "Images",
        "{Images/<wnid>-<breed>/<image>.jpg, train_list.mat, test_list.mat} (images.tar and "
        "lists.tar extracted)",
        ("train_list.mat", "test_list.mat", "Images"),
    ),
    "flowers102": Fgvc(None, ".", "", (), _flowers_names),
    "stanford_cars": Fgvc(None, ".", "", (), _cars_names),
}


def _fgvc_layout(name: str, spec: Fgvc) -> str:
    if not spec.official:  # the torchvision layout of MTIL, or VPT's json splits beside the images
        return (
            f"<data_root>/{mtil.SPECS[MTIL[name]].layout}, or <data_root>/{name}/ holding VPT's split "
            "files {train,val,test}.json ({image path relative to that folder: class id})"
        )
    return (
        f"<data_root>/{name}/{spec.layout}, optionally with VPT's split files {{train,val,test}}.json "
        f"({{image path under {spec.image_dir}/: class id}})"
    )


def _candidates(root: Path, name: str, spec: Fgvc) -> list[Path]:
    """Existing folders that may hold the dataset: data_root/<name>, then the archive's own folder."""
    paths = [root / name]
    if spec.archive:
        paths += [root / name / spec.archive, root / spec.archive]
    seen: list[Path] = []
    for p in paths:
        if p.is_dir() and p not in seen:
            seen.append(p)
    return seen


def fgvc_plan(root: Path, name: str) -> Plan:
    spec = FGVC[name]
    layout = _fgvc_layout(name, spec)
    folders = _candidates(root, name, spec)
    for folder in folders:
        if (folder / "train.json").is_file():
            missing = first_missing(folder, ("test.json", spec.image_dir))
            if missing is not None:
                return Plan(layout, missing=missing)
            return Plan(
                layout,
                load=lambda tf, f=folder: _read_vpt_json(name, f, spec, tf, layout),
                found=f"VPT json splits in {folder}",
            )
    if not spec.official:  # no json splits: torchvision's layout through MTIL, both named on error
        plan = mtil_plan(root, name)
        plan.layout = layout
        return plan
    for folder in folders:
        if (folder / spec.official[0]).is_file():
            missing = first_missing(folder, spec.official)
            if missing is not None:
                return Plan(layout, missing=missing)
            reader = _read_dogs if name == "stanford_dogs" else _read_cub_style
            return Plan(
                layout,
                load=lambda tf, f=folder, read=reader: read(name, f, tf, layout),
                found=f"official layout in {folder}",
            )
    return Plan(layout, missing=first_missing(root / name, spec.official))


def _read_vpt_json(name: str, folder: Path, spec: Fgvc, tf: Transform, layout: str) -> TargetData:
    """VPT's ``{image path: class id}`` splits (``val.json`` too when present); ids -> 0..K-1 in
    sorted order, as ``JSONDataset`` maps them (it does so per split; here over all splits
    together, so they agree on every id)."""
    splits = (*SPLITS, "val") if (folder / "val.json").is_file() else SPLITS
    entries = {split: json_split(name, folder / f"{split}.json", layout) for split in splits}
    for other in splits[1:]:
        check_disjoint(
            name, folder / "train.json", folder / f"{other}.json", entries["train"], entries[other], layout
        )
    ids = sorted({cid for split in splits for _, cid in entries[split]})
    contiguous = {cid: i for i, cid in enumerate(ids)}
    image_dir = folder / spec.image_dir
    names = names_from_folders(name, folder, ids, [(rel, cid) for s in splits for rel, cid in entries[s]])
    if names is None and spec.fixed_names is not None:
        names = spec.fixed_names(folder, len(ids))
    if names is None:
        names = [f"class {cid}" for cid in ids]  # VPT's files carry ids only
    parts = {
        split: image_files(
            name,
            image_dir,
            [(rel, contiguous[cid]) for rel, cid in entries[split]],
            names,
            tf,
            folder / f"{split}.json",
            layout,
        )
        for split in splits
    }
    return TargetData(name, names, parts["train"], parts["test"], parts.get("val"))


def _read_cub_style(name: str, folder: Path, tf: Transform, layout: str) -> TargetData:
    """CUB-200-2011 / NABirds: ``<image id> <path>`` (images.txt), ``<image id> <class id>``
    (image_class_labels.txt), ``<image id> <1|0>`` (train_test_split.txt, 1 = train) and
    ``<class id> <name>`` (classes.txt). Class ids are mapped to 0..K-1 in sorted id order: NABirds'
    555 leaf ids are not contiguous and its classes.txt also lists the inner hierarchy nodes."""
    images = id_lines(name, folder / "images.txt", layout)
    labels = dict(id_lines(name, folder / "image_class_labels.txt", layout))
    is_train = dict(id_lines(name, folder / "train_test_split.txt", layout))
    classes = {
        to_int(name, folder / "classes.txt", k, layout): v
        for k, v in id_lines(name, folder / "classes.txt", layout)
    }
    rows: list[tuple[str, int, str]] = []
    for image_id, rel in images:
        for table, file in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DataError(
                    f"dataset '{name}' file {folder / file}",
                    f"has no line for image id {image_id}",
                    f"one line per image of images.txt; layout {layout}",
                )
        if is_train[image_id] not in ("0", "1"):
            raise DataError(
                f"dataset '{name}' file {folder / 'train_test_split.txt'}",
                f"has '{is_train[image_id]}' for image id {image_id}",
                "1 (train) or 0 (test)",
            )
        split = "train" if is_train[image_id] == "1" else "test"
        rows.append((rel, to_int(name, folder / "image_class_labels.txt", labels[image_id], layout), split))
    ids = sorted({cid for _, cid, _ in rows})
    unnamed = [cid for cid in ids if cid not in classes]
    if unnamed:
        raise DataError(
            f"dataset '{name}' file {folder / 'classes.txt'}",
            f"has no name for class id {unnamed[0]}",
            f"a '<class id> <name>' line for every class of image_class_labels.txt; layout {layout}",
        )
    names = [readable(classes[cid]) for cid in ids]
    contiguous = {cid: i for i, cid in enumerate(ids)}
    parts = {
        split: image_files(
            name,
            folder / "images",
            [(r, contiguous[c]) for r, c, s in rows if s == split],
            names,
            tf,
            folder / "images.txt",
            layout,
        )
        for split in SPLITS
    }
    return TargetData(name, names, parts["train"], parts["test"])


def _read_dogs(name: str, folder: Path, tf: Transform, layout: str) -> TargetData:
    """Stanford Dogs: ``file_list`` (``<wnid>-<breed>/<image>.jpg``) and 1-based ``labels`` of
    {train,test}_list.mat; breed names from the image folders (``n02085620-Chihuahua``)."""
    entries: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        mat_path = folder / f"{split}_list.mat"
        try:
            mat = loadmat(mat_path)
            files = [str(np.asarray(f).ravel()[0]) for f in np.asarray(mat["file_list"]).ravel()]
            labels = [int(y) for y in np.asarray(mat["labels"]).ravel()]
        except (MatReadError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise unreadable(name, mat_path, err, layout) from None
        if len(files) != len(labels):
            raise DataError(
                f"dataset '{name}' file {mat_path}",
                f"has {len(files)} files but {len(labels)} labels",
                f"one label per file; layout {layout}",
            )
        entries[split] = list(zip(files, labels))
    check_disjoint(
        name, folder / "train_list.mat", folder / "test_list.mat", entries["train"], entries["test"], layout
    )
    ids = sorted({y for split in SPLITS for _, y in entries[split]})
    names = names_from_folders(name, folder, ids, [e for s in SPLITS for e in entries[s]])
    if names is None:
        raise DataError(
            f"dataset '{name}' at {folder}",
            "a label's images are spread over several breed folders",
            f"one Images/<wnid>-<breed>/ folder per label; layout {layout}",
        )
    contiguous = {cid: i for i, cid in enumerate(ids)}
    parts = {
        split: image_files(
            name,
            folder / "Images",
            [(rel, contiguous[y]) for rel, y in entries[split]],
            names,
            tf,
            folder / f"{split}_list.mat",
            layout,
        )
        for split in SPLITS
    }
    return TargetData(name, names, parts["train"], parts["test"])
