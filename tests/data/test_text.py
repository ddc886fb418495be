"""Corpus readers: plain text and JSONL, compressed or not; bad lines are skipped and counted."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import pytest

from madapt.data.text import ReadStats, iter_texts, read_texts, resolve_corpus
from madapt.errors import DataError


def test_plain_text_skips_empty_and_non_utf8_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"first line\n\n   \nbad \xff\xfe bytes\nsecond \xc3\xa9 line\r\nthird\n")
    texts, stats = read_texts(str(path))
    assert texts == ["first line", "second \u00e9 line", "third"]
    assert stats.skipped == {"empty": 2, "not UTF-8": 1}
    assert stats.kept == 3 and stats.n_skipped == 3
    assert stats.kept_bytes == sum(len(t.encode("utf-8")) for t in texts)


def test_jsonl_reads_text_field_and_counts_each_bad_kind(tmp_path: Path) -> None:
    lines = [
        json.dumps({"text": "hello\nworld\r\n\tend", "meta": 1}),
        "{not json",
        json.dumps({"title": "x"}),
        json.dumps({"text": 5}),
        json.dumps(["text"]),
        json.dumps({"text": "  "}),
        "",
        json.dumps({"text": "caf\u00e9"}),
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts, stats = read_texts(str(path))
    assert texts == ["hello\nworld\r\n\tend", "caf\u00e9"]  # kept exactly, newlines included
    assert stats.skipped == {"not JSON": 1, "no string 'text' field": 3, "empty": 2}


@pytest.mark.parametrize("opener,suffix", [(lzma.open, ".txt.xz"), (gzip.open, ".jsonl.gz")])
def test_compressed_files(tmp_path: Path, opener, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    body = "a b\nc d\n" if "txt" in suffix else '{"text": "a b"}\n{"text": "c d"}\n'
    with opener(path, "wb") as fh:
        fh.write(body.encode("utf-8"))
    assert read_texts(str(path))[0] == ["a b", "c d"]


def test_max_bytes_stops_streaming(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("".join(f"line{i:03d}\n" for i in range(100)), encoding="utf-8")
    stats = ReadStats()
    texts = list(iter_texts(path, stats, max_bytes=20))
    assert texts == ["line000", "line001", "line002"]  # 7 bytes each: stops once >= 20
    assert stats.kept_bytes == 21


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_texts(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="is not a file"):
        resolve_corpus(str(tmp_path))


def test_bundled_corpus_is_present_and_sized() -> None:
    texts, stats = read_texts("stdlib_docstrings")
    assert 1_000_000 < stats.kept_bytes < 3_000_000
    assert stats.n_skipped == 0 and len(texts) > 5000
    assert len(set(texts)) == len(texts)  # the gathering script deduplicates paragraphs
