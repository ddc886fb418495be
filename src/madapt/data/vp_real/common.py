"""Shared pieces of the VP dataset loaders: the image-list dataset, the read plan, file helpers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scipy.io
from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from madapt.data.vp import TargetData
from madapt.errors import DataError

Transform = Callable[[Any], Any]
SPLITS = ("train", "test")


class ImageFiles(Dataset):
    """Images listed by path: ``(transform(RGB image), label)``, with ``targets`` and ``classnames``.

    torchvision's ``default_loader`` converts to RGB (CUB and Dogs hold some greyscale / CMYK
    JPEGs), as VPT's ``JSONDataset`` does.
    """

    def __init__(
        self, name: str, paths: list[str], targets: list[int], classnames: list[str], transform: Transform
    ) -> None:
        self.name, self.paths, self.targets = name, paths, targets
        self.classnames, self.transform = classnames, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(default_loader(self.paths[i])), self.targets[i]


@dataclass
class Plan:
    """How ``name`` would be read from data_root: a loader when its layout is complete."""

    layout: str  # the expected layout, one line
    load: Callable[[Transform], TargetData] | None = None
    missing: Path | None = None  # first missing path of the layout
    found: str = ""  # what was found (for `check_layout`)


def first_missing(folder: Path, relative: Iterable[str]) -> Path | None:
    if not folder.is_dir():
        return folder
    for rel in relative:
        if not (folder / rel).exists():
            return folder / rel
    return None


def unreadable(name: str, where: Path, err: BaseException, layout: str) -> DataError:
    first = (str(err).strip().splitlines() or [""])[0][:160]
    return DataError(
        f"dataset '{name}' at {where}", f"cannot be read ({type(err).__name__}: {first})", layout
    )


def loadmat(path: Path) -> dict[str, Any]:
    return scipy.io.loadmat(str(path))


def to_int(name: str, file: Path, value: str, layout: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(
            f"dataset '{name}' file {file}",
            f"has '{value}' where a class id belongs",
            f"integer class ids; layout {layout}",
        ) from None


def id_lines(name: str, file: Path, layout: str) -> list[tuple[str, str]]:
    """``<id> <value>`` lines (the value may hold spaces, as NABirds' class names do)."""
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(
                f"dataset '{name}' file {file}",
                f"line {number} is '{line.strip()[:60]}'",
                f"'<id> <value>' lines; layout {layout}",
            )
        rows.append((parts[0], parts[1].strip()))
    return rows


def json_split(name: str, file: Path, layout: str) -> list[tuple[str, int]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise unreadable(name, file, err, layout) from None
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"dataset '{name}' file {file}",
            "is not a non-empty JSON object",
            f"VPT's {{image path: class id}} split; layout {layout}",
        )
    rows = []
    for rel, cid in data.items():
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(
                f"dataset '{name}' file {file}",
                f"maps '{rel}' to {cid!r}",
                f"an integer class id per image path (VPT's json splits); layout {layout}",
            )
        rows.append((str(rel), cid))
    return rows


def check_disjoint(
    name: str,
    train_file: Path,
    test_file: Path,
    train: list[tuple[str, int]],
    test: list[tuple[str, int]],
    layout: str,
) -> None:
    """The formats split disjointly; a shared image means a wrong or hand-edited split file."""
    shared = {rel for rel, _ in train} & {rel for rel, _ in test}
    if shared:
        raise DataError(
            f"dataset '{name}' files {train_file} and {test_file}",
            f"share {len(shared)} images (e.g. {min(shared)})",
            f"disjoint splits; layout {layout}",
        )


def readable(raw: str) -> str:
    """Class name for reports: CUB's ``001.Black_footed_Albatross`` and Dogs' ``n02085620-Chihuahua``
    lose their numbering, underscores become spaces."""
    return re.sub(r"^(\d+\.|n\d{8}-)", "", raw).replace("_", " ").strip()


def names_from_folders(
    name: str,
    folder: Path,
    ids: list[int],
    pairs: list[tuple[str, int]],
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
        lookup = {int(k): v for k, v in id_lines(name, table, "'<class id> <name>' lines") if k.isdigit()}
        return [readable(lookup.get(int(r), r)) for r in raw]
    return [readable(r) for r in raw]


def image_files(
    name: str,
    image_dir: Path,
    rows: list[tuple[str, int]],
    names: list[str],
    tf: Transform,
    listed_in: Path,
    layout: str,
) -> ImageFiles:
    """The split as `ImageFiles`, after checking every listed image exists (a missing one is a
    one-line error now rather than a crash inside a DataLoader worker hours later)."""
    if not rows:
        raise DataError(f"dataset '{name}' file {listed_in}", "lists no image for this split", layout)
    paths = [image_dir / rel for rel, _ in rows]
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"dataset '{name}' image {path}", f"is missing (listed in {listed_in.name})", layout
            )
    return ImageFiles(name, [str(p) for p in paths], [y for _, y in rows], names, tf)
