"""Text corpus readers for tokenizer training (issue 5): plain text (one document per line) or
JSONL with a ``"text"`` field, optionally xz/gzip-compressed, read as a stream.

Bad lines never crash a run: empty lines, lines that are not UTF-8, JSONL lines that are not JSON
objects with a string ``"text"`` are skipped and counted in `ReadStats` so the caller can report
how many were dropped. A JSONL text is kept exactly as the corpus has it, newlines included:
sentencepiece takes each document whole (its word split cuts at spaces only, `tokenizers.units`),
so a newline is a character of the text like any other. A plain-text document is one line.
"""

from __future__ import annotations

import gzip
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from madapt.errors import DataError

BUNDLED = {"stdlib_docstrings": "stdlib_docstrings.txt.xz"}


@dataclass
class ReadStats:
    """Counts of what a reader kept and skipped (by reason)."""

    kept: int = 0
    kept_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


def resolve_corpus(name_or_path: str) -> Path:
    """A bundled corpus name (``stdlib_docstrings``) or an existing file; DataError otherwise."""
    if name_or_path in BUNDLED:
        return Path(str(resources.files("madapt") / "assets" / "corpus" / BUNDLED[name_or_path]))
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        found = "no such file" if not path.exists() else "is not a file"
        raise DataError(
            f"corpus '{name_or_path}'",
            found,
            f"a .txt/.jsonl file (optionally .xz/.gz) or a bundled corpus: {', '.join(BUNDLED)}",
        )
    return path


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _is_jsonl(path: Path) -> bool:
    suffixes = [s for s in path.suffixes if s not in (".xz", ".gz")]
    return bool(suffixes) and suffixes[-1] in (".jsonl", ".json")


def iter_texts(
    path: str | Path, stats: ReadStats | None = None, max_bytes: int | None = None
) -> Iterator[str]:
    """Stream the documents of a corpus file, skipping (and counting in ``stats``) bad lines.

    Stops after the document that brings the kept UTF-8 bytes to ``max_bytes``.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    jsonl = _is_jsonl(path)
    with _open(path) as fh:
        for raw in fh:
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                stats.skip("not UTF-8")
                continue
            if jsonl:
                if not line.strip():
                    stats.skip("empty")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    stats.skip("not JSON")
                    continue
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str):
                    stats.skip("no string 'text' field")
                    continue
                line = text
            if not line.strip():
                stats.skip("empty")
                continue
            stats.kept += 1
            stats.kept_bytes += len(line.encode("utf-8"))
            yield line
            if max_bytes is not None and stats.kept_bytes >= max_bytes:
                return


def read_texts(name_or_path: str, max_bytes: int | None = None) -> tuple[list[str], ReadStats]:
    """All documents of a corpus (bundled name or path) in memory, with the read statistics."""
    path = resolve_corpus(name_or_path)
    stats = ReadStats()
    try:
        texts = list(iter_texts(path, stats, max_bytes))
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise DataError(
            f"corpus '{name_or_path}'", f"cannot be read ({err})", "a readable text file"
        ) from None
    return texts, stats
