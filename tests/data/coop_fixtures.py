"""Tiny CoOp datasets written in the real on-disk formats CoOp's ``datasets/*.py`` read.

A ``split_zhou_<Name>.json`` made by hand, the official layouts CoOp falls back to (FGVC-Aircraft
variant lists, ImageNet folders + ``classnames.txt``, the UCF-101-midframes tree with
``ucfTrainTestlist``, Pets annotations, Flowers' ``imagelabels.mat`` + ``cat_to_name.json``, the
Stanford Cars devkit .mat files, SUN397 partitions, class-folder trees) and a
``split_fewshot/shot_K-seed_S.pkl`` pickled the way Dassl pickles it, with a ``Datum`` class
defined here under Dassl's module name. Every dataset has its full class count (the reader checks
it). Each image is a solid colour encoding its label (`fixtures.color_of`). Each ``write_*``
returns the facts tests check.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.io
from fixtures import EUROSAT_FOLDERS, jpeg


def _image(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(label))


def _lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------------------------
# split file

EUROSAT_NAMES = (
    "Annual Crop Land",
    "Forest",
    "Herbaceous Vegetation Land",
    "Highway or Road",
    "Industrial Buildings",
    "Pasture Land",
    "Permanent Crop Land",
    "Residential Buildings",
    "River",
    "Sea or Lake",
)


def write_eurosat_split(root: Path, train: int = 6, val: int = 3, test: int = 2) -> dict:
    """``eurosat/split_zhou_EuroSAT.json`` + ``2750/`` images. Labels appear in the order 3, 0, 7, ...
    (not sorted) and interleaved, so first-appearance order differs from label order."""
    folder = root / "eurosat"
    appearance = [3, 0, 7, 1, 9, 2, 8, 4, 6, 5]
    split: dict[str, list] = {}
    for key, n in (("train", train), ("val", val), ("test", test)):
        split[key] = []
        for j in range(n):
            for label in appearance:
                cls = EUROSAT_FOLDERS[label]
                rel = f"{cls}/{cls}_{key}{j}.jpg"
                split[key].append([rel, label, EUROSAT_NAMES[label]])
                _image(folder / "2750" / rel, label)
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps(split, indent=4))
    return split


def write_eurosat_raw(root: Path, per_class: int = 10) -> None:
    """``eurosat/2750/<Folder>/<Folder>_<n>.jpg`` only (no split file)."""
    for label, cls in enumerate(EUROSAT_FOLDERS):
        for n in range(per_class):
            _image(root / "eurosat" / "2750" / cls / f"{cls}_{n + 1}.jpg", label)


# ---------------------------------------------------------------------------------------------
# official layouts

CALTECH_REAL = ("airplanes", "Faces", "Leopards", "Motorbikes", "accordion")


def write_caltech_raw(root: Path, per_class: int = 4) -> list[str]:
    """``caltech-101/101_ObjectCategories``: 100 categories + the two CoOp ignores."""
    cats = [*CALTECH_REAL, *(f"object_{i:02d}" for i in range(100 - len(CALTECH_REAL)))]
    for cat in [*cats, "BACKGROUND_Google", "Faces_easy"]:
        for n in range(per_class):
            _image(root / "caltech-101" / "101_ObjectCategories" / cat / f"image_{n + 1:04d}.jpg", 0)
    return sorted(cats)


PET_BREEDS = (
    "Abyssinian",
    "american_bulldog",
    "Bengal",
    "great_pyrenees",
    *(f"breed{i:02d}" for i in range(33)),
)


def write_pets_raw(root: Path, trainval: int = 5, test: int = 1) -> None:
    """``oxford_pets/{images, annotations/{trainval,test}.txt}``.

    Lines: '<Breed>_<n> <class id> <species> <breed id>'.
    """
    folder = root / "oxford_pets"
    for split, n_per, start in (("trainval", trainval, 1), ("test", test, 100)):
        lines = []
        for label, breed in enumerate(PET_BREEDS):
            for n in range(start, start + n_per):
                lines.append(f"{breed}_{n} {label + 1} {1 + label % 2} {label + 1}")
                _image(folder / "images" / f"{breed}_{n}.jpg", label)
        _lines(folder / "annotations" / f"{split}.txt", lines)


def write_aircraft(root: Path) -> dict:
    """``fgvc_aircraft/{images, variants.txt, images_variant_{train,val,test}.txt}``; variants.txt
    not sorted and holding spaces and slashes, as the real one ('Boeing 737-200', 'F/A-18')."""
    folder = root / "fgvc_aircraft"
    variants = ["Boeing 737-200", "A320", "F/A-18", *(f"Model {(i * 37) % 97:03d} X" for i in range(97))]
    _lines(folder / "variants.txt", variants)
    facts: dict = {"variants": variants}
    for split, offset in (("train", 1000000), ("val", 2000000), ("test", 3000000)):
        lines, labels = [], []
        for i in range(200 if split == "train" else 100):
            label = (i * 13) % len(variants)
            lines.append(f"{offset + i} {variants[label]}")
            labels.append(label)
            _image(folder / "images" / f"{offset + i}.jpg", label)
        _lines(folder / f"images_variant_{split}.txt", lines)
        facts[split] = labels
    return facts


UCF_ACTIONS = (
    "ApplyEyeMakeup",
    "YoYo",
    "PlayingDaf",
    *(f"DoThing{chr(65 + i // 26)}{chr(97 + i % 26)}" for i in range(98)),
)


def write_ucf101_raw(root: Path, trainval: int = 5, test: int = 1) -> None:
    """``ucf101/{UCF-101-midframes/<Split_Action>/<video>.jpg, ucfTrainTestlist/*.txt}``."""
    folder = root / "ucf101"
    lists = folder / "ucfTrainTestlist"
    _lines(lists / "classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(UCF_ACTIONS)])
    for split, n_per, group in (("trainlist01", trainval, 8), ("testlist01", test, 1)):
        lines = []
        for label, action in enumerate(UCF_ACTIONS):
            for c in range(n_per):
                video = f"v_{action}_g{group:02d}_c{c + 1:02d}"
                lines.append(f"{action}/{video}.avi" + (f" {label + 1}" if split == "trainlist01" else ""))
                renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
                _image(folder / "UCF-101-midframes" / renamed / f"{video}.jpg", label)
        _lines(lists / f"{split}.txt", lines)


def write_flowers_raw(root: Path, per_class: int = 5) -> dict[str, str]:
    """``oxford_flowers/{jpg, imagelabels.mat, cat_to_name.json}``; labels 1-based, interleaved."""
    folder = root / "oxford_flowers"
    labels = [1 + (i * 7) % 102 for i in range(102 * per_class)]
    for i, label in enumerate(labels):
        _image(folder / "jpg" / f"image_{i + 1:05d}.jpg", label - 1)
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    names = {str(y): f"flower number {y}" for y in range(1, 103)}
    names["1"] = "pink primrose"
    (folder / "cat_to_name.json").write_text(json.dumps(names))
    return names


def _annotations(rows: list[tuple[str, int]]) -> np.ndarray:
    """A 1 x n MATLAB struct array with ``fname`` and ``class`` fields (the devkit's)."""
    out = np.empty((1, len(rows)), dtype=[("fname", object), ("class", object)])
    for i, (fname, cls) in enumerate(rows):
        out[0, i] = (np.array([fname]), np.array([[cls]], dtype=np.uint8))
    return out


def write_cars_raw(root: Path, trainval: int = 3, test: int = 1) -> None:
    """``stanford_cars/{cars_train, cars_test, devkit/{cars_meta,cars_train_annos}.mat,
    cars_test_annos_withlabels.mat}``; meta names end with the year ('AM General Hummer SUV 2000')."""
    folder = root / "stanford_cars"
    names = ["AM General Hummer SUV 2000", *(f"Make{i} Model {2001 + i % 12}" for i in range(195))]
    meta = np.empty((1, len(names)), dtype=object)
    for i, n in enumerate(names):
        meta[0, i] = np.array([n])
    (folder / "devkit").mkdir(parents=True)
    scipy.io.savemat(folder / "devkit" / "cars_meta.mat", {"class_names": meta})
    for image_dir, anno, n_per in (
        ("cars_train", "devkit/cars_train_annos.mat", trainval),
        ("cars_test", "cars_test_annos_withlabels.mat", test),
    ):
        rows = [(f"{image_dir[5:]}{c:03d}{n}.jpg", c + 1) for c in range(len(names)) for n in range(n_per)]
        for fname, cls in rows:
            _image(folder / image_dir / fname, cls - 1)
        scipy.io.savemat(folder / anno, {"annotations": _annotations(rows)})


def write_sun397_raw(root: Path, trainval: int = 3, test: int = 1) -> list[str]:
    """``sun397/{SUN397/<letter>/<class>[/<sub>]/, ClassName.txt, Training_01.txt, Testing_01.txt}``."""
    folder = root / "sun397"
    classes = ["/a/abbey", "/b/bakery/shop", *(f"/p/place_{i:03d}" for i in range(395))]
    _lines(folder / "ClassName.txt", classes)
    for split, n_per in (("Training_01", trainval), ("Testing_01", test)):
        lines = []
        for label, cls in enumerate(classes):
            for n in range(n_per):
                rel = f"{cls}/sun_{split[0]}{n}.jpg"
                lines.append(rel)
                _image(folder / "SUN397" / rel[1:], label)
        _lines(folder / f"{split}.txt", lines)
    return classes


def write_imagenet(root: Path, train: int = 1, val: int = 1) -> list[str]:
    """``imagenet/{classnames.txt, images/train/<wnid>/, images/val/<wnid>/}`` with 1000 wnids."""
    folder = root / "imagenet"
    wnids = [f"n{(i * 7919) % 100000:08d}" for i in range(1000)]
    _lines(folder / "classnames.txt", [f"{w} class {w[-3:]} name" for w in wnids])
    for split, n_per in (("train", train), ("val", val)):
        for label, w in enumerate(sorted(wnids)):
            for n in range(n_per):
                _image(folder / "images" / split / w / f"{w}_{n}.JPEG", label)
    return sorted(wnids)


# ---------------------------------------------------------------------------------------------
# CoOp's few-shot cache


class Datum:
    """Dassl's ``Datum`` (``dassl/data/datasets/base_dataset.py``), minus its file check."""

    __module__ = "dassl.data.datasets.base_dataset"

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        self._impath, self._label, self._domain, self._classname = impath, label, domain, classname


@contextmanager
def _dassl_importable() -> Iterator[None]:
    """Pickle checks a class can be imported by its module name: make Dassl's name resolve to
    this `Datum` while dumping, then restore ``sys.modules``."""
    names = ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset")
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[names[-1]].Datum = Datum  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module


def write_coop_cache(path: Path, image_dir: str, split: dict[str, list]) -> None:
    """``pickle.dump({"train": [Datum...], "val": [...]}, protocol=HIGHEST_PROTOCOL)`` as CoOp
    does; ``impath`` absolute under ``image_dir`` (another machine's prefix), ``split`` rows
    ``[relative path, label, classname]``."""
    write_datums(
        path,
        {
            key: [Datum(f"{image_dir}/{rel}", label, 0, cname) for rel, label, cname in rows]
            for key, rows in split.items()
        },
    )


def write_datums(path: Path, data: dict[str, list[Datum]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _dassl_importable(), path.open("wb") as file:
        pickle.dump(data, file, protocol=pickle.HIGHEST_PROTOCOL)
