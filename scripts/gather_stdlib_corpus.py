"""Gather the bundled micro corpus for `madapt run adat/micro` (issue 5): Python standard library
docstrings, one paragraph per line, stored xz-compressed in the package.

Run ONCE by a maintainer; the recipe only reads the stored file, so results do not change with the
Python version installed. Usage::

    python scripts/gather_stdlib_corpus.py [--max-bytes 2500000] [--out PATH.txt.xz]

Paragraphs (blank-line separated blocks of a docstring) have their whitespace collapsed to single
spaces, duplicates are dropped, and files are visited in sorted order, so the output is
deterministic for one Python version. Test suites, IDLE, lib2to3 and site-packages are skipped.
"""

from __future__ import annotations

import argparse
import ast
import lzma
import sysconfig
from pathlib import Path

SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__"}


def docstrings(path: Path) -> list[str]:
    """Every module/class/function docstring of one source file (unparsable files give none)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [
        n
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    return [doc for n in nodes if (doc := ast.get_docstring(n))]


def paragraphs(doc: str) -> list[str]:
    out, block = [], []
    for line in doc.splitlines() + [""]:
        if line.strip():
            block.append(line.strip())
        elif block:
            out.append(" ".join(" ".join(block).split()))
            block = []
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-bytes", type=int, default=2_500_000)
    default_out = Path(__file__).resolve().parents[1] / "src/madapt/assets/corpus/stdlib_docstrings.txt.xz"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    lines: list[str] = []
    size = 0
    for path in sorted(root.rglob("*.py")):
        if SKIP_PARTS & set(path.relative_to(root).parts):
            continue
        for doc in docstrings(path):
            for para in paragraphs(doc):
                if len(para) < 20 or para in seen:  # too short to be prose (e.g. "Return x.")
                    continue
                seen.add(para)
                lines.append(para)
                size += len(para.encode("utf-8")) + 1
        if size >= args.max_bytes:
            break
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(lzma.compress(("\n".join(lines) + "\n").encode("utf-8"), preset=9))
    print(f"{len(lines)} paragraphs, {size} bytes -> {args.out} ({args.out.stat().st_size} bytes compressed)")


if __name__ == "__main__":
    main()
