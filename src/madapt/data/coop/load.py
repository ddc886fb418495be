"""`load_coop`: a CoOp dataset as K-shot train, min(K, 4)-shot val and the full test split.

Seed 003 §4.1 trains on the 16-shot CoOp split of each dataset (seeds 1-3) and reports test
accuracy. The full lists come from `readers.read_split`, the shots from `sampling.sample_indices`
(Dassl's draw) unless ``indices`` are given: read back from a run folder, or converted from CoOp's
cache by `cache.read_coop_cache`. Given indices win over sampling, after a check that they fit the
split and ``shots``.

Two CoOp conventions the caller should know:

- ImageNet has no validation split in CoOp (``super().__init__(train_x=train, val=test, test=test)``):
  ``val`` is the test split and ``indices`` holds ``"train"`` only.
- ``classnames`` are prompt-ready: CoOp's trainers build prompts with ``name.replace("_", " ")``
  (``trainers/zsclip.py``, ``coop.py``); we apply it once here, so formatting ``templates`` with
  ``classnames`` gives CoOp's prompts.

Every listed image of the sampled train / val items and of the test split must exist: a missing
one is a one-line `DataError` now, not a crash in a DataLoader worker later. Images are read with
torchvision's ``default_loader`` (PIL, RGB: Dassl's ``read_image``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from madapt.data.coop.readers import CoopSplit, Items, missing_path, read_split
from madapt.data.coop.sampling import check_indices, check_shots, sample_indices
from madapt.data.coop.specs import SPECS, spec_of, templates_of
from madapt.data.mtil import check_root
from madapt.data.vp_real import ImageFiles
from madapt.errors import DataError

Transform = Callable[[Any], Any]
ROOT_EXPECTED = (
    "a folder holding CoOp's dataset folders (imagenet/, caltech-101/, oxford_pets/, ...; "
    "see `madapt data check coop`)"
)


@dataclass
class FewShotSplits:
    """One dataset on the CoOp protocol (the contract of issue 14, `fewshot_interface.md` §1)."""

    name: str
    classnames: list[str]  # CoOp's names with its fixes, label order, "_" -> " "
    templates: list[str]  # [hand template] (+ CoOp's 7-prompt ensemble for ImageNet)
    train: Dataset  # K-shot train: (preprocess_train(image), label)
    val: Dataset  # min(K, 4)-shot val (ImageNet: the test split, as CoOp)
    test: Dataset  # the full test split
    indices: dict[str, list[int]]  # the shots as indices into split.train / split.val
    split: CoopSplit | None = None  # the full lists the indices point into


def _files(
    split: CoopSplit, items: Items, picks: Sequence[int] | None, classnames: list[str], transform: Transform
) -> ImageFiles:
    spec = SPECS[split.name]
    chosen = range(len(items)) if picks is None else picks
    paths = [split.image_root / items.paths[i] for i in chosen]
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"dataset '{split.name}' image {path}",
                f"is missing (listed by {split.source})",
                f"<root>/{spec.layout}",
            )
    return ImageFiles(
        split.name, [str(p) for p in paths], [items.labels[i] for i in chosen], classnames, transform
    )


def load_coop(
    name: str,
    root: str | Path,
    shots: int,
    seed: int,
    preprocess_train: Transform,
    preprocess_val: Transform,
    indices: dict[str, list[int]] | None = None,
) -> FewShotSplits:
    """Dataset ``name`` under ``root`` with ``shots`` per class, drawn for ``seed``.

    ``indices`` (read back from a run folder, or converted from CoOp's shot_K-seed_S cache) win
    over sampling. Raises `UnknownNameError` for a name outside `COOP_DATASETS`, `DataError` for a
    missing folder / file / image or indices that do not fit, `ConfigError` for shots < 1.
    """
    spec_of(name)
    check_shots(shots)  # both before the listing, which takes a while on ImageNet
    split = read_split(name, check_root(root, ROOT_EXPECTED))
    if indices is None:
        chosen = sample_indices(split, shots, seed)
    else:
        chosen = check_indices(split, shots, indices, f"indices for '{name}' ({shots} shots)")
    classnames = [c.replace("_", " ") for c in split.classnames]
    test = _files(split, split.test, None, classnames, preprocess_val)
    val = test if split.val is None else _files(split, split.val, chosen["val"], classnames, preprocess_val)
    return FewShotSplits(
        name,
        classnames,
        templates_of(name),
        _files(split, split.train, chosen["train"], classnames, preprocess_train),
        val,
        test,
        chosen,
        split,
    )


def check_coop(root: str | Path) -> list[tuple[str, bool, str]]:
    """``(dataset, present, message)`` for the 11 datasets under ``root`` (``madapt data check coop``).

    Reads no image and no list: says which layout would be read (split file, or the official
    layout with a generated split), how many CoOp few-shot caches sit next to it, or what is
    missing and the layout expected.
    """
    base = check_root(root, ROOT_EXPECTED)
    rows = []
    for spec in SPECS.values():
        folder = base / spec.folder
        missing = missing_path(spec, base)
        if missing is not None:
            rows.append((spec.name, False, f"missing {missing}; expected {base}/{spec.layout}"))
            continue
        if spec.split_file and (folder / spec.split_file).is_file():
            message = f"found {folder} with {spec.split_file}"
        elif spec.split_file:
            message = (
                f"found the official layout in {folder}, no {spec.split_file} (a generated split, not CoOp's)"
            )
        else:
            message = f"found {folder}"
        caches = sorted((folder / "split_fewshot").glob("shot_*-seed_*.pkl"))
        if caches:
            message += f"; {len(caches)} CoOp few-shot cache(s) in split_fewshot/"
        rows.append((spec.name, True, message))
    return rows
