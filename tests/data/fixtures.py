"""Tiny fake datasets written in the exact on-disk formats torchvision (and tiny-imagenet) read.

Each ``write_*`` creates ``<root>/<dataset folder>`` and returns facts the tests check against
(split sizes, labels). Image colour encodes the label (`color_of`), so a test can tell that the
image and the label of a sample belong together.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from madapt.data.templates import CLASSNAMES

_JPEG_CACHE: dict[int, bytes] = {}

EUROSAT_FOLDERS = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)


def color_of(label: int) -> tuple[int, int, int]:
    return (label % 64 * 4, label // 64 * 30, 128)  # distinct for labels < 512


def jpeg(label: int) -> bytes:
    """An 8x8 JPEG of a solid colour that encodes ``label``."""
    if label not in _JPEG_CACHE:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), color_of(label)).save(buf, format="JPEG", quality=100)
        _JPEG_CACHE[label] = buf.getvalue()
    return _JPEG_CACHE[label]


def _image(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(label))


def write_aircraft(root: Path, n_classes: int = 100, train: int = 30, test: int = 20) -> dict:
    """variants.txt deliberately not sorted: labels must follow its line order."""
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = [f"Model {(i * 37) % n_classes:03d}" for i in range(n_classes)]
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("".join(v + "\n" for v in variants))
    labels: dict[str, list[int]] = {}
    for split, n, offset in (("train", train, 0), ("test", test, 1000)):
        lines, labels[split] = [], []
        for i in range(n):
            label = (i * 7) % n_classes
            image_id = f"{offset + i:07d}"
            _image(data / "images" / f"{image_id}.jpg", label)
            lines.append(f"{image_id} {variants[label]}\n")
            labels[split].append(label)
        (data / f"images_variant_{split}.txt").write_text("".join(lines))
    (data / "images_variant_trainval.txt").write_text("")
    return {"labels": labels, "variants": variants}


def write_caltech101(root: Path, n_classes: int = 101) -> dict:
    """Class ``i`` gets ``1 + i % 3`` images; 102 folders including BACKGROUND_Google."""
    cats = root / "caltech101" / "101_ObjectCategories"
    folders = sorted(
        ["Faces", "Faces_easy", "Leopards", "Motorbikes"] + [f"cat_{i:03d}" for i in range(n_classes - 4)]
    )
    _image(cats / "BACKGROUND_Google" / "image_0001.jpg", 0)
    labels = []
    for label, folder in enumerate(folders):
        for k in range(1 + label % 3):
            _image(cats / folder / f"image_{k + 1:04d}.jpg", label)
            labels.append(label)
    return {"labels": labels, "n": len(labels)}


def write_cifar100(root: Path, train: int = 40, test: int = 30, n_classes: int = 100) -> dict:
    """python pickle batches as in cifar-100-python.tar.gz (``data`` rows are CHW uint8)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = [n.replace(" ", "_") for n in CLASSNAMES["cifar100"]][:n_classes]
    labels = {}
    for split, n in (("train", train), ("test", test)):
        ys = [(i * 13) % len(names) for i in range(n)]
        data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
        for i, y in enumerate(ys):
            data[i] = np.array(color_of(y), dtype=np.uint8)[:, None, None]
        batch = {"data": data.reshape(n, 3072), "fine_labels": ys, "coarse_labels": [0] * n}
        (folder / split).write_bytes(pickle.dumps(batch))
        labels[split] = ys
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names, "coarse_label_names": ["x"] * 20}))
    return {"labels": labels}


def write_dtd(root: Path, classes: list[str] | None = None, train_per: int = 1, test_per: int = 2) -> dict:
    data = root / "dtd" / "dtd"
    classes = list(CLASSNAMES["dtd"]) if classes is None else classes
    (data / "labels").mkdir(parents=True)
    sizes = {}
    for split, per in (("train", train_per), ("test", test_per)):
        lines = []
        for label, cls in enumerate(classes):
            for k in range(per):
                name = f"{cls}_{split}_{k:04d}.jpg"
                _image(data / "images" / cls / name, label)
                lines.append(f"{cls}/{name}\n")
        (data / "labels" / f"{split}1.txt").write_text("".join(lines))
        sizes[split] = len(lines)
    return {"sizes": sizes}


def write_eurosat(root: Path, per_class: tuple[int, ...] = (3, 2, 2, 2, 2, 2, 2, 2, 2, 3)) -> dict:
    labels = []
    for label, (folder, n) in enumerate(zip(EUROSAT_FOLDERS, per_class)):
        for k in range(n):
            _image(root / "eurosat" / "2750" / folder / f"{folder}_{k + 1}.jpg", label)
            labels.append(label)
    return {"labels": labels, "n": len(labels)}


def write_flowers(root: Path, n_images: int = 30, n_classes: int = 102) -> dict:
    """imagelabels.mat (1-based labels) and setid.mat (trnid/valid/tstid image ids)."""
    folder = root / "flowers-102"
    labels = [(i * 11) % n_classes + 1 for i in range(n_images)]
    for image_id, label in enumerate(labels, 1):
        _image(folder / "jpg" / f"image_{image_id:05d}.jpg", label - 1)
    ids = np.arange(1, n_images + 1)
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": np.array(labels)[None, :]})
    scipy.io.savemat(
        folder / "setid.mat",
        {"trnid": ids[0::3][None, :], "valid": ids[1::3][None, :], "tstid": ids[2::3][None, :]},
    )
    return {
        "labels": [y - 1 for y in labels],
        "train_ids": ids[0::3].tolist(),
        "test_ids": ids[2::3].tolist(),
    }


def write_food(root: Path, n_classes: int = 101, train_per: int = 1, test_per: int = 1) -> dict:
    folder = root / "food-101"
    classes = [f"dish_{i:03d}" for i in range(n_classes)]
    (folder / "meta").mkdir(parents=True)
    labels = {}
    for split, per in (("train", train_per), ("test", test_per)):
        meta = {}
        for label, cls in enumerate(classes):
            meta[cls] = [f"{cls}/{split}{k}" for k in range(per)]
            for k in range(per):
                _image(folder / "images" / cls / f"{split}{k}.jpg", label)
        (folder / "meta" / f"{split}.json").write_text(json.dumps(meta))
        labels[split] = [label for label in range(n_classes) for _ in range(per)]
    return {"classes": classes, "labels": labels}


def _idx(path: Path, array: np.ndarray) -> None:
    """MNIST idx format: magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, train: int = 20, test: int = 10) -> dict:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = {}
    for prefix, split, n in (("train", "train", train), ("t10k", "test", test)):
        ys = np.array([(i * 3) % 10 for i in range(n)], dtype=np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:] = (ys * 20)[:, None, None]
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", ys)
        labels[split] = ys.tolist()
    return {"labels": labels}


def write_pets(root: Path, n_classes: int = 37, train_per: int = 2, test_per: int = 1) -> dict:
    """annotations/{trainval,test}.txt lines: '<Breed>_<n> <class id> <species> <breed id>'."""
    folder = root / "oxford-iiit-pet"
    breeds = [f"breed_{chr(97 + i % 26)}{i}" for i in range(n_classes)]
    (folder / "annotations").mkdir(parents=True)
    sizes = {}
    for split, per, start in (("trainval", train_per, 1), ("test", test_per, 100)):
        lines = []
        for label, breed in enumerate(breeds):
            for k in range(per):
                image_id = f"{breed}_{start + k}"
                _image(folder / "images" / f"{image_id}.jpg", label)
                lines.append(f"{image_id} {label + 1} {1 + label % 2} {label // 2 + 1}\n")
        (folder / "annotations" / f"{split}.txt").write_text("".join(lines))
        sizes[split] = len(lines)
    return {"breeds": breeds, "sizes": sizes}


def _annotations(labels: list[int]) -> np.ndarray:
    fields = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    annos = np.zeros(len(labels), dtype=fields)
    for i, label in enumerate(labels):
        annos[i] = (1, 1, 8, 8, label + 1, f"{i + 1:05d}.jpg")
    return annos[None, :]


def write_cars(root: Path, n_classes: int = 196, train: int = 12, test: int = 8) -> dict:
    """devkit .mat files (1-based `class`) as the Stanford Cars devkit ships them."""
    folder = root / "stanford_cars"
    (folder / "devkit").mkdir(parents=True)
    names = np.array([f"Make {i} Model {2000 + i % 13}" for i in range(n_classes)], dtype=object)
    scipy.io.savemat(folder / "devkit" / "cars_meta.mat", {"class_names": names[None, :]})
    labels = {}
    for split, n, mat in (
        ("train", train, folder / "devkit" / "cars_train_annos.mat"),
        ("test", test, folder / "cars_test_annos_withlabels.mat"),
    ):
        ys = [(i * 17) % n_classes for i in range(n)]
        for i, y in enumerate(ys):
            _image(folder / f"cars_{split}" / f"{i + 1:05d}.jpg", y)
        scipy.io.savemat(mat, {"annotations": _annotations(ys)})
        labels[split] = ys
    return {"labels": labels, "names": names.tolist()}


def write_sun397(root: Path, n_classes: int = 397, n_images: int = 22) -> dict:
    """ClassName.txt ('/a/abbey', '/a/apartment_building/outdoor' style) + sun_*.jpg files."""
    folder = root / "SUN397"
    folder.mkdir(parents=True)
    classes = [
        f"/{chr(97 + i % 26)}/scene_{i:03d}" + ("/outdoor" if i % 5 == 0 else "") for i in range(n_classes)
    ]
    (folder / "ClassName.txt").write_text("".join(c + "\n" for c in classes))
    labels = []
    for i in range(n_images):
        label = (i * 19) % n_classes
        _image(folder / classes[label].strip("/") / f"sun_{i:08x}.jpg", label)
        labels.append(label)
    return {"labels": labels, "n": n_images, "classes": classes}


def write_tinyimagenet(
    root: Path,
    n_classes: int = 200,
    train_per: int = 1,
    val: int = 30,
) -> dict:
    folder = root / "tiny-imagenet-200"
    wnids = [f"n{1000000 + i * 7919:08d}" for i in range(n_classes)]
    ordered = sorted(wnids)
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(w + "\n" for w in reversed(wnids)))
    words = [f"{w}\tthing {ordered.index(w)}, synonym\n" for w in wnids] + ["n99999999\tother\n"]
    (folder / "words.txt").write_text("".join(words))
    for w in wnids:
        for k in range(train_per):
            _image(folder / "train" / w / "images" / f"{w}_{k}.JPEG", ordered.index(w))
    lines, val_labels = [], []
    for i in range(val):
        label = (i * 23) % n_classes
        _image(folder / "val" / "images" / f"val_{i}.JPEG", label)
        lines.append(f"val_{i}.JPEG\t{ordered[label]}\t0\t0\t63\t63\n")
        val_labels.append(label)
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return {"wnids": ordered, "val_labels": val_labels}


WRITERS = {
    "aircraft": write_aircraft,
    "caltech101": write_caltech101,
    "cifar100": write_cifar100,
    "dtd": write_dtd,
    "eurosat": write_eurosat,
    "flowers": write_flowers,
    "food": write_food,
    "mnist": write_mnist,
    "oxford_pet": write_pets,
    "stanford_cars": write_cars,
    "sun397": write_sun397,
    "tinyimagenet": write_tinyimagenet,
}
