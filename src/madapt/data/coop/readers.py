"""Full train / val / test lists of the 11 CoOp datasets (CoOp ``datasets/*.py``).

A dataset with a ``split_zhou_<Name>.json`` (CoOp ``OxfordPets.read_split``: ``{"train", "val",
"test"}``, each a list of ``[path relative to the image folder, label, class name]``) is read from
it: labels, names and item order are the file's. Otherwise `layouts` reads the official layout
(always for FGVC-Aircraft and ImageNet, which have no split file). Either way the labels must be
exactly 0..C-1 with C the dataset's class count, and one label has one name.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from madapt.data.coop.layouts import RAW_READERS, SPLIT_SEED, Row, layout_error, read_aircraft, read_imagenet
from madapt.data.coop.specs import CoopSpec, spec_of


@dataclass
class Items:
    """One split: image paths (relative to `CoopSplit.image_root`, "/"-separated) and labels."""

    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class CoopSplit:
    """The full split lists of one dataset, before few-shot sampling."""

    name: str
    image_root: Path
    classnames: list[str]  # label order, CoOp's names as in its files ("_" kept)
    train: Items
    val: Items | None  # None for ImageNet: CoOp validates on the test split (``val=test``)
    test: Items
    source: str  # what was read: the split file or the official layout


# ---------------------------------------------------------------------------------------------
# split file and the common checks


def _read_split_file(spec: CoopSpec, path: Path) -> tuple[list[Row], ...]:
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise layout_error(spec, path, f"is not readable JSON ({err})") from err
    if not isinstance(split, dict) or any(
        not isinstance(split.get(k), list) for k in ("train", "val", "test")
    ):
        raise layout_error(spec, path, "does not hold lists under 'train', 'val' and 'test'")
    out = []
    for key in ("train", "val", "test"):
        rows = []
        for entry in split[key]:
            if not (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[2], str)
                and (isinstance(entry[1], int) or str(entry[1]).isdigit())
            ):
                raise layout_error(
                    spec, path, f"has a '{key}' entry {str(entry)[:80]} that is not [path, label, name]"
                )
            rows.append((entry[0], int(entry[1]), entry[2]))
        out.append(rows)
    return tuple(out)


def missing_path(spec: CoopSpec, root: Path) -> Path | None:
    """The first missing path of ``spec``'s layout under ``root`` (None when it can be read)."""
    folder = root / spec.folder
    first = next((p for p in (folder, folder / spec.image_dir) if not p.exists()), None)
    if first is not None or (spec.split_file and (folder / spec.split_file).is_file()):
        return first
    raw = next((folder / f for f in spec.raw_files if not (folder / f).exists()), None)
    # Without the official files the split file is what to fetch (CoOp's DATASETS.md links it).
    return folder / spec.split_file if raw is not None and spec.split_file else raw


def _items(spec: CoopSpec, rows: list[Row], where: Path, names: dict[int, str]) -> Items:
    """Rows as `Items`, recording each label's name; a label with two names is a `DataError`."""
    for _, label, cname in rows:
        if names.setdefault(label, cname) != cname:
            raise layout_error(spec, where, f"names label {label} both '{names[label]}' and '{cname}'")
    return Items([r[0].replace("\\", "/") for r in rows], [r[1] for r in rows])


def _read_layout(spec: CoopSpec, folder: Path) -> tuple[list[Row], ...]:
    """The rows of the official layout; a line the reader cannot parse is a `DataError`."""
    try:
        if spec.name == "imagenet":
            return read_imagenet(spec, folder)
        if spec.name == "fgvc_aircraft":
            return read_aircraft(spec, folder)
        return RAW_READERS[spec.name](spec, folder, random.Random(SPLIT_SEED))
    except (ValueError, IndexError, KeyError) as err:  # a malformed line or .mat field
        raise layout_error(
            spec, folder, f"holds a file CoOp's reader cannot parse ({type(err).__name__}: {err})"
        ) from err


def read_split(name: str, root: str | Path) -> CoopSplit:
    """The full split lists of dataset ``name`` under ``root`` (see the module docstring)."""
    spec = spec_of(name)
    root = Path(root).expanduser()
    folder = root / spec.folder
    if (missing := missing_path(spec, root)) is not None:
        raise layout_error(spec, missing, "is missing")
    split_file = folder / spec.split_file if spec.split_file else None
    if split_file is not None and split_file.is_file():
        rows, where, source = _read_split_file(spec, split_file), split_file, f"split file {split_file}"
    else:
        rows, where, source = _read_layout(spec, folder), folder, f"official layout in {folder}"
        if spec.split_file:
            source += (
                f" (no {spec.split_file}: split generated with seed {SPLIT_SEED}, not CoOp's published one)"
            )
    names: dict[int, str] = {}
    parts = [_items(spec, r, where, names) for r in rows]
    if not parts[0].paths:
        raise layout_error(spec, where, "lists no training image")
    # Dassl takes the class count and names from the training items (`get_lab2cname(train_x)`).
    train_labels = set(parts[0].labels)
    if sorted(train_labels) != list(range(spec.n_classes)) or not set(names) <= train_labels:
        raise layout_error(
            spec,
            where,
            f"has training labels {_span(train_labels)} (all splits: {_span(set(names))}) but "
            f"{spec.config} has {spec.n_classes} classes (0..{spec.n_classes - 1})",
        )
    val = parts[1] if len(parts) == 3 else None
    return CoopSplit(
        name,
        folder / spec.image_dir,
        [names[i] for i in range(spec.n_classes)],
        parts[0],
        val,
        parts[-1],
        source,
    )


def _span(labels_set: set[int]) -> str:
    labels = sorted(labels_set)
    return f"{len(labels)} distinct in {labels[0]}..{labels[-1]}" if labels else "none"
