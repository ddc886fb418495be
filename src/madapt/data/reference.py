"""Reference data for distillation: an image folder plus a caption file (ZSCL, seed 000 §3.2).

ZSCL's MTIL setting distils on ImageNet *train* images (read as an ImageFolder) and on every
Conceptual Captions validation caption (`Validation_GCC-1.1.0-Validation_output.csv`, a
tab-separated file whose caption column is ``title``). Here the images are any folder, searched
recursively for .jpg/.jpeg/.png (so ``ImageNet/train`` works as is), in sorted path order; the
captions are a text file with one caption per line, or a CSV/TSV with a ``caption`` or ``title``
column.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from madapt.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CAPTION_COLUMNS = ("caption", "title")


class ReferenceImages(Dataset):
    """Every image under ``folder`` (recursive, sorted); items are ``transform(RGB image)``.

    Items carry no label: distillation compares teacher and student on the images only.
    """

    def __init__(self, folder: str | Path, transform: Callable[[Any], Any] | None = None) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DataError(
                f"reference images {self.folder}",
                "folder does not exist",
                "a folder of .jpg/.png images (nested folders allowed, e.g. ImageNet/train)",
            )
        self.paths = sorted(
            p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.paths:
            raise DataError(
                f"reference images {self.folder}",
                "holds no .jpg/.jpeg/.png file",
                "at least one image (nested folders allowed)",
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        with Image.open(self.paths[i]) as img:
            image = img.convert("RGB")
        return self.transform(image) if self.transform is not None else image


def read_captions(path: str | Path) -> list[str]:
    """Captions from a .txt (one per line) or a .csv/.tsv with a caption/title column."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"reference captions {path}",
            "file does not exist",
            "a .txt file with one caption per line, or a .csv/.tsv with a 'caption' or 'title' column",
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".csv", ".tsv"):
        captions = _table_captions(path, text)
    else:
        captions = [line.strip() for line in text.splitlines()]
    captions = [c for c in captions if c]
    if not captions:
        raise DataError(f"reference captions {path}", "contains no caption", "at least one non-empty caption")
    return captions


def _table_captions(path: Path, text: str) -> list[str]:
    lines = text.splitlines()
    header = lines[0] if lines else ""
    # ZSCL's CC file is tab-separated despite its .csv name; sniff the header.
    delimiter = "\t" if "\t" in header else ","
    rows = csv.DictReader(lines, delimiter=delimiter)
    fields = {f.strip().lower(): f for f in (rows.fieldnames or [])}
    column = next((fields[c] for c in CAPTION_COLUMNS if c in fields), None)
    if column is None:
        raise DataError(
            f"reference captions {path}",
            f"has columns {sorted(fields.values())}",
            "a 'caption' or 'title' column",
        )
    return [(row.get(column) or "").strip() for row in rows]


@dataclass
class ReferenceData:
    """Images and captions the frozen teacher and the student are compared on."""

    images: Dataset
    captions: list[str]


def load_reference(
    images: str | Path, captions: str | Path, transform: Callable[[Any], Any] | None = None
) -> ReferenceData:
    """`ReferenceData` from an image folder and a caption file (ZSCL: ImageNet + CC)."""
    return ReferenceData(ReferenceImages(images, transform), read_captions(captions))
