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

Splits: a run trains on "train", picks its reported epoch on "val" and reports "test" (Table 6.2).
A dataset with a validation split of its own uses it (DTD ``val1``, Flowers ``valid``, VPT's
``val.json``); for the others `load_real` holds out Table 6.2's validation count from the official
training set (`VAL_HOLDOUT`, stratified, fixed seed), so the training count is Table 6.2's:

============== ============================================ =========================================
name           train (+ val)                                test
============== ============================================ =========================================
cifar10        data batches 1-5: 40,000 + 10,000 held out   test_batch (10,000)
cifar100       train: 40,000 + 10,000 held out              test (10,000)
svhn           train_32x32.mat: 58,605 + 14,652 held out    test_32x32.mat (26,032); extra unused
gtsrb          GTSRB/Training: 21,312 + 5,328 held out      Final_Test + GT-final_test.csv (12,630)
dtd            partition 1 ``train1`` (1,880) + ``val1``    ``test1`` (1,880)
flowers102     ``trnid`` (1,020) + ``valid`` (1,020)        ``tstid`` (6,149)
food101        meta/train.json: 60,600 + 15,150 held out    meta/test.json (25,250)
cub200         train.json (5,394) + val.json | official     test.json | is_training_image=0 (5,794)
               is_training_image=1: 5,394 + 600 held out
nabirds        train.json (21,536) + val.json | official    test.json | official test (24,633)
               train: 21,536 + 2,393 held out
stanford_dogs  train.json (10,800) + val.json |             test.json | test_list.mat (8,580)
               train_list.mat: 10,800 + 1,200 held out
stanford_cars  train.json (7,329) + val.json | torchvision  test.json | torchvision test (8,041)
               train: 7,329 + 815 held out
============== ============================================ =========================================

GTSRB: Table 6.2 lists 21,312 train and 2,526 val, which do not add up to the 26,640 official
training images; the training count is kept and the rest (5,328) validates. ``holdout=False``
trains on the whole official training set with no validation split (the last epoch is reported).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from madapt.data import mtil
from madapt.data.vp import TargetData, holdout, load_folder
from madapt.data.vp_real.common import ImageFiles, Plan, Transform
from madapt.data.vp_real.fgvc import FGVC, fgvc_plan
from madapt.data.vp_real.torchvision_sets import GTSRB_CLASSES, MTIL, TORCHVISION, mtil_plan, torchvision_plan
from madapt.errors import DataError

__all__ = [
    "FGVC",
    "GTSRB_CLASSES",
    "VAL_HOLDOUT",
    "VP_DATASETS",
    "ImageFiles",
    "check_layout",
    "expected_layout",
    "load_real",
]

ROOT_EXPECTED = "a folder holding the VP datasets in their standard layouts (madapt.data.vp_real)"
# Table 6.2's validation count, held out of the training set when the layout has no val split
VAL_HOLDOUT: dict[str, int] = {
    "cifar10": 10_000,
    "cifar100": 10_000,
    "svhn": 14_652,
    "gtsrb": 5_328,
    "food101": 15_150,
    "cub200": 600,
    "nabirds": 2_393,
    "stanford_dogs": 1_200,
    "stanford_cars": 815,
}
HOLDOUT_SEED = 0
VP_DATASETS: tuple[str, ...] = (
    "cifar10",
    "cifar100",
    "svhn",
    "gtsrb",
    "dtd",
    "flowers102",
    "food101",
    "cub200",
    "nabirds",
    "stanford_dogs",
    "stanford_cars",
)


def _plan(root: Path, name: str) -> Plan | None:
    if name in FGVC:
        return fgvc_plan(root, name)
    if name in TORCHVISION:
        folder, required, layout, opener = TORCHVISION[name]
        return torchvision_plan(root, name, folder, required, layout, opener)
    if name in MTIL:
        return mtil_plan(root, name)
    return None


def _folder_tree(name: str) -> str:
    return f"<data_root>/{name}/{{train,test}}/<class>/<image>"


def load_real(data_root: str | Path, name: str, transform: Transform, holdout_val: bool = True) -> TargetData:
    """Target dataset ``name`` (a preset's ``data.name``) from ``data_root``, each image through
    ``transform`` (`vp.image_transform`); see the module docstring for layouts and splits.

    Raises `DataError` naming the first missing file of the standard layout (when the ImageFolder
    fallback ``data_root/<name>/train`` is absent too), an unreadable file, a split file that
    contradicts the others, or a listed image that is missing. Nothing is written to disk.
    """
    root = mtil.check_root(data_root, ROOT_EXPECTED)
    plan = _plan(root, name)
    if plan is not None and plan.load is not None:
        data = plan.load(transform)
    elif plan is None or (root / name / "train").is_dir():
        data = load_folder(root, name, transform)
    else:
        raise DataError(
            f"dataset '{name}'",
            f"{plan.missing} is missing",
            f"{plan.layout}; or the folder tree {_folder_tree(name)}",
        )
    if not holdout_val:
        return TargetData(data.name, data.classnames, data.train, data.test)
    if data.val is None and name in VAL_HOLDOUT:
        return holdout(data, VAL_HOLDOUT[name], HOLDOUT_SEED)
    return data


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
