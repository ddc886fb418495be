"""A run folder's ``report.md``: a title, then sections of text, tables and image links.

    write_report(run_dir, "MTIL order I: zscl", [
        Section("Summary", rows=[{"transfer": 68.1, "avg": 75.4, "last": 83.6}]),
        Section("Accuracy matrix", rows=accuracy_matrix_rows(acc, names),
                images=[run_dir / "accuracy_matrix.png"]),
    ])

Images are linked relative to the run folder, so the folder can be moved or zipped whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from madapt.report.tables import Row, markdown_table
from madapt.runs import atomic_write_text

REPORT_NAME = "report.md"


@dataclass(frozen=True)
class Section:
    """One ``##`` section: optional paragraph, optional table (row dicts), optional images."""

    heading: str
    text: str = ""
    rows: Sequence[Row] = ()
    columns: Sequence[str] | None = None
    digits: int = 1
    images: Sequence[str | Path] = field(default_factory=tuple)


def _image_link(image: str | Path, run_dir: Path) -> str:
    """Link an image relative to the (resolved) run folder.

    Callers pass either a path they can open (absolute, or relative to the working directory, like
    ``run.path / "heatmap.png"``) or a name relative to the run folder (``"heatmap.png"``).
    """
    path = Path(image)
    opened = path.resolve()
    if path.is_absolute() or opened.is_relative_to(run_dir):
        path = Path(os.path.relpath(opened, run_dir))
    return f"![{path.stem}]({path.as_posix()})"


def render_report(title: str, sections: Sequence[Section], run_dir: Path | str = ".") -> str:
    """The Markdown text of a report (what `write_report` writes)."""
    run_dir = Path(run_dir).resolve()
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.heading}")
        if section.text:
            parts.append(section.text.strip())
        if section.rows:
            parts.append(markdown_table(section.rows, section.columns, section.digits))
        parts.extend(_image_link(image, run_dir) for image in section.images)
    return "\n\n".join(parts) + "\n"


def write_report(run_dir: Path | str, title: str, sections: Sequence[Section]) -> Path:
    """Write ``run_dir/report.md`` atomically and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_NAME
    atomic_write_text(path, render_report(title, sections, run_dir))
    return path
