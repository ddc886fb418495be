"""Tiny VP target datasets written in the exact on-disk formats their readers expect.

torchvision formats (CIFAR-10 python batches, SVHN .mat, GTSRB folders + CSV), the official FGVC
layouts (CUB_200_2011 / NABirds text files, Stanford Dogs' .mat lists) and VPT's json split files.
Each ``write_*`` returns the facts tests check: per-split sizes, labels in file order, class names.
Image colour encodes the contiguous label (`fixtures.color_of`), so a test can tell that an image
and its label belong together.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import scipy.io
from fixtures import color_of, jpeg
from PIL import Image

CUB_CLASSES = ("Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani")
# NABirds: leaf ids are not contiguous and classes.txt also lists inner hierarchy nodes
NABIRDS_LEAVES = {
    817: "Gray Jay",
    295: "Common Loon",
    1000: "Gray Catbird",
    313: "Pacific Loon",
    401: "Red-tailed Hawk (Dark morph)",
}
NABIRDS_INNER = {0: "Birds", 1: "Perching Birds", 22: "Loons"}
DOG_BREEDS = (
    ("n02085620", "Chihuahua"),
    ("n02088094", "Afghan_hound"),
    ("n02099429", "curly-coated_retriever"),
)


def _jpeg(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(label))


def _ppm(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color_of(label)).save(buf, format="PPM")
    path.write_bytes(buf.getvalue())


def _json(path: Path, mapping: dict[str, int]) -> None:
    path.write_text(json.dumps(mapping))


def _cells(strings: list[str]) -> np.ndarray:
    """A MATLAB cell column of char arrays, as Stanford Dogs' lists hold them."""
    cells = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cells[i, 0] = np.array([s])
    return cells


# ---------------------------------------------------------------------------------------------
# torchvision formats


def write_cifar10(root: Path, per_batch: int = 3, test: int = 7) -> dict:
    """cifar-10-batches-py: five ``data_batch_*`` + ``test_batch`` pickles (rows CHW uint8) and
    ``batches.meta`` with ``label_names``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels: dict[str, list[int]] = {"train": [], "test": []}

    def batch(file: str, ys: list[int]) -> None:
        data = np.zeros((len(ys), 3, 32, 32), dtype=np.uint8)
        for i, y in enumerate(ys):
            data[i] = np.array(color_of(y), dtype=np.uint8)[:, None, None]
        (folder / file).write_bytes(pickle.dumps({"data": data.reshape(len(ys), 3072), "labels": ys}))

    for b in range(5):
        ys = [(b * per_batch + i) * 3 % 10 for i in range(per_batch)]
        batch(f"data_batch_{b + 1}", ys)
        labels["train"] += ys
    labels["test"] = [(i * 7) % 10 for i in range(test)]
    batch("test_batch", labels["test"])
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return {"labels": labels, "classes": names}


def write_svhn(root: Path, train: int = 12, test: int = 6) -> dict:
    """svhn/{train,test}_32x32.mat: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) with 10 for digit 0."""
    folder = root / "svhn"
    folder.mkdir(parents=True)
    labels = {}
    for split, n in (("train", train), ("test", test)):
        digits = [(i * 3 + len(split)) % 10 for i in range(n)]
        x = np.zeros((32, 32, 3, n), dtype=np.uint8)
        for i, d in enumerate(digits):
            x[:, :, :, i] = np.array(color_of(d), dtype=np.uint8)
        y = np.array([[d if d else 10] for d in digits], dtype=np.uint8)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        labels[split] = digits
    return {"labels": labels}


def write_gtsrb(root: Path, n_classes: int = 43, test: int = 9) -> dict:
    """gtsrb/GTSRB/Training/<00000..>/{*.ppm, GT-<class>.csv}, GTSRB/Final_Test/Images/*.ppm and
    gtsrb/GT-final_test.csv (``;``-separated, ClassId column), as torchvision GTSRB reads them."""
    base = root / "gtsrb"
    train_labels = []
    for c in range(n_classes):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        per = 1 + c % 2
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for k in range(per):
            _ppm(folder / f"00000_{k:05d}.ppm", c)
            rows.append(f"00000_{k:05d}.ppm;8;8;0;0;7;7;{c}")
            train_labels.append(c)
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    images = base / "GTSRB" / "Final_Test" / "Images"
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    test_labels = [(i * 5) % n_classes for i in range(test)]
    for i, c in enumerate(test_labels):
        _ppm(images / f"{i:05d}.ppm", c)
        rows.append(f"{i:05d}.ppm;8;8;0;0;7;7;{c}")
    (images / "GT-final_test.test.csv").write_text("\n".join(r.rsplit(";", 1)[0] for r in rows) + "\n")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return {"labels": {"train": train_labels, "test": test_labels}}


# ---------------------------------------------------------------------------------------------
# FGVC official layouts and VPT's json splits


def write_cub(
    root: Path, folder: str = "cub200", train_per: int = 3, test_per: int = 2, vpt_json: bool = False
) -> dict:
    """CUB_200_2011 files in ``root/folder``; with ``vpt_json`` also VPT's {train,val,test}.json,
    val taking the last official training image of each class (ids 0-based)."""
    base = root / folder
    images, labels, split, classes = [], [], [], []
    json_splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    facts: dict = {"labels": {"train": [], "test": []}, "paths": {"train": [], "test": []}}
    image_id = 0
    for c, cls in enumerate(CUB_CLASSES):
        cls_folder = f"{c + 1:03d}.{cls}"
        classes.append(f"{c + 1} {cls_folder}")
        for k in range(train_per + test_per):
            image_id += 1
            rel = f"{cls_folder}/{cls}_{k:04d}_{image_id}.jpg"
            _jpeg(base / "images" / rel, c)
            is_train = k < train_per
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {int(is_train)}")
            facts["labels"]["train" if is_train else "test"].append(c)
            facts["paths"]["train" if is_train else "test"].append(rel)
            key = "test" if not is_train else ("val" if k == train_per - 1 else "train")
            json_splits[key][rel] = c
    for file, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", classes),
    ):
        (base / file).write_text("\n".join(lines) + "\n")
    if vpt_json:
        for s, mapping in json_splits.items():
            _json(base / f"{s}.json", mapping)
    facts["json"] = json_splits
    facts["names"] = [c.replace("_", " ") for c in CUB_CLASSES]
    return facts


def write_nabirds(root: Path, train_per: int = 2, test_per: int = 2, vpt_json: bool = False) -> dict:
    """NABirds: uuid image ids, images/<4-digit class id>/<hex>.jpg, non-contiguous leaf class ids;
    with ``vpt_json`` the json splits keep the raw class ids (one train image per class to val)."""
    base = root / "nabirds"
    leaves = sorted(NABIRDS_LEAVES)
    images, labels, split = [], [], []
    json_splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    facts: dict = {"labels": {"train": [], "test": []}}
    n = 0
    for cid in (817, 295, 1000, 313, 401):  # file order is not class order
        for k in range(train_per + test_per):
            n += 1
            uid = f"{n:08x}-21dc-4d0c-bfe1-{n:012x}"
            rel = f"{cid:04d}/{uid.replace('-', '')}.jpg"
            _jpeg(base / "images" / rel, leaves.index(cid))
            is_train = k < train_per
            images.append(f"{uid} {rel}")
            labels.append(f"{uid} {cid}")
            split.append(f"{uid} {int(is_train)}")
            facts["labels"]["train" if is_train else "test"].append(leaves.index(cid))
            key = "test" if not is_train else ("val" if k == 0 else "train")
            json_splits[key][rel] = cid
    classes = {**NABIRDS_INNER, **NABIRDS_LEAVES}
    (base / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in sorted(classes.items())))
    for file, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
    ):
        (base / file).write_text("\n".join(lines) + "\n")
    if vpt_json:
        for s, mapping in json_splits.items():
            _json(base / f"{s}.json", mapping)
    facts["json"] = json_splits
    facts["names"] = [NABIRDS_LEAVES[c] for c in leaves]
    return facts


def write_dogs(root: Path, train_per: int = 3, test_per: int = 2, vpt_json: bool = False) -> dict:
    """Stanford Dogs: Images/<wnid>-<breed>/<wnid>_<n>.jpg and {train,test}_list.mat with
    ``file_list`` / ``annotation_list`` cells and 1-based ``labels`` (the lists.tar files)."""
    base = root / "stanford_dogs"
    lists: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    json_splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for c, (wnid, breed) in enumerate(DOG_BREEDS):
        for k in range(train_per + test_per):
            rel = f"{wnid}-{breed}/{wnid}_{100 + k}.jpg"
            _jpeg(base / "Images" / rel, c)
            s = "train" if k < train_per else "test"
            lists[s].append((rel, c + 1))
            json_splits["test" if s == "test" else ("val" if k == 0 else "train")][rel] = c
    for s, rows in lists.items():
        scipy.io.savemat(
            base / f"{s}_list.mat",
            {
                "file_list": _cells([r for r, _ in rows]),
                "annotation_list": _cells([r.rsplit(".", 1)[0] for r, _ in rows]),
                "labels": np.array([[y] for _, y in rows], dtype=np.float64),
            },
        )
    if vpt_json:
        for s, mapping in json_splits.items():
            _json(base / f"{s}.json", mapping)
    return {
        "labels": {s: [y - 1 for _, y in rows] for s, rows in lists.items()},
        "paths": {s: [r for r, _ in rows] for s, rows in lists.items()},
        "json": json_splits,
        "names": ["Chihuahua", "Afghan hound", "curly-coated retriever"],
    }


def write_flowers_json(root: Path, n_classes: int = 102) -> dict:
    """VPT's Oxford Flowers folder: jpg/image_*.jpg with json keys relative to the folder itself."""
    base = root / "flowers102"
    splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    n = 0
    for c in range(n_classes):
        for s in ("train", "val", "test"):
            n += 1
            rel = f"jpg/image_{n:05d}.jpg"
            _jpeg(base / rel, c)
            splits[s][rel] = c
    for s, mapping in splits.items():
        _json(base / f"{s}.json", mapping)
    return {"json": splits}


def write_cars_json(root: Path, n_classes: int = 196) -> dict:
    """VPT's Stanford Cars folder: cars_{train,test}/*.jpg, devkit/cars_meta.mat, json with 1-based
    class ids (the devkit's), keys relative to the folder."""
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array([f"Make {i} Model {2000 + i % 13}" for i in range(n_classes)], dtype=object)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names[None, :]})
    splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for c in range(n_classes):
        for s, rel in (
            ("train", f"cars_train/{2 * c + 1:05d}.jpg"),
            ("val", f"cars_train/{2 * c + 2:05d}.jpg"),
            ("test", f"cars_test/{c + 1:05d}.jpg"),
        ):
            _jpeg(base / rel, c)
            splits[s][rel] = c + 1
    for s, mapping in splits.items():
        _json(base / f"{s}.json", mapping)
    return {"json": splits, "names": names.tolist()}


def write_image_folder(
    root: Path,
    name: str,
    classes: tuple[str, ...] = ("alpha", "beta", "gamma"),
    train_per: int = 2,
    test_per: int = 1,
) -> dict:
    """The ImageFolder fallback ``root/<name>/{train,test}/<class>/*.jpg``."""
    for s, per in (("train", train_per), ("test", test_per)):
        for c, cls in enumerate(classes):
            for k in range(per):
                _jpeg(root / name / s / cls / f"{k}.jpg", c)
    return {
        "sizes": {"train": train_per * len(classes), "test": test_per * len(classes)},
        "classes": list(classes),
    }


OFFICIAL_WRITERS = {
    "cifar10": write_cifar10,
    "svhn": write_svhn,
    "gtsrb": write_gtsrb,
    "cub200": write_cub,
    "nabirds": write_nabirds,
    "stanford_dogs": write_dogs,
}
