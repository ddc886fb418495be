"""Tables (rich + Markdown), report.md and PNG plots."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from madapt.report.markdown import Section, render_report, write_report
from madapt.report.plots import accuracy_heatmap, curves, curves_figure, heatmap_figure
from madapt.report.tables import accuracy_matrix_rows, format_cell, markdown_table, print_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROWS = [
    {"method": "zero-shot", "transfer": 69.39, "avg": 65.29, "last": 65.29},
    {"method": "zscl", "transfer": 68.1, "avg": 75.44, "last": None, "note": "a|b"},
]
ACC = [[50.0, 30.0, 20.0], [40.0, 80.0, 25.0], [35.0, 70.0, 90.0]]
NAMES = ["Aircraft", "Caltech101", "CIFAR100"]


def test_format_cell() -> None:
    assert format_cell(69.39) == "69.4"
    assert format_cell(69.39, digits=2) == "69.39"
    assert format_cell(np.float32(0.5), digits=3) == "0.500"
    assert format_cell(None) == format_cell(float("nan")) == "–"
    assert format_cell(3) == "3" and format_cell(np.int64(7)) == "7"
    assert format_cell(True) == "True"
    assert format_cell("zscl") == "zscl"


def test_markdown_table_layout_and_values() -> None:
    text = markdown_table(ROWS)
    lines = text.split("\n")
    assert lines[0] == "| method | transfer | avg | last | note |"
    assert lines[1] == "| --- | --- | --- | --- | --- |"
    assert lines[2] == "| zero-shot | 69.4 | 65.3 | 65.3 | – |"
    assert lines[3] == "| zscl | 68.1 | 75.4 | – | a\\|b |"
    assert markdown_table(ROWS, columns=["avg", "method"]).split("\n")[2] == "| 65.3 | zero-shot |"


def test_print_table_shows_every_value() -> None:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_table("MTIL order I", ROWS, console=console)
    out = console.file.getvalue()
    assert "MTIL order I" in out
    for cell in ("zero-shot", "69.4", "65.3", "zscl", "68.1", "75.4", "a|b"):
        assert cell in out
    assert "75.44" not in out  # rounded to one digit


def test_accuracy_matrix_rows_follow_table_3_5_layout() -> None:
    rows = accuracy_matrix_rows(ACC, NAMES)
    assert [r["after"] for r in rows] == NAMES + ["Transfer", "Avg.", "Last"]
    assert rows[1]["Caltech101"] == 80.0 and rows[1]["mean"] == pytest.approx(145 / 3)
    transfer, avg, last = rows[3:]
    assert transfer["Aircraft"] is None and transfer["CIFAR100"] == 22.5
    assert transfer["mean"] == pytest.approx(26.25)
    assert avg["mean"] == pytest.approx(440 / 9)
    assert last["mean"] == pytest.approx(65.0)
    with pytest.raises(ValueError):
        accuracy_matrix_rows(ACC, NAMES[:2])


def test_write_report_contains_tables_and_relative_image_links(tmp_path: Path) -> None:
    image = tmp_path / "plots" / "accuracy_matrix.png"
    path = write_report(
        tmp_path,
        "Run: zscl",
        [
            Section("Summary", text="Three metrics.", rows=ROWS, digits=2),
            Section("Accuracy matrix", rows=accuracy_matrix_rows(ACC, NAMES), images=[image, "curve.png"]),
        ],
    )
    assert path == tmp_path / "report.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Run: zscl\n")
    assert "## Summary\n\nThree metrics.\n\n| method |" in text
    assert "| zero-shot | 69.39 | 65.29 | 65.29 | – |" in text
    # 26.25 is exact in binary, and format() rounds the tie to even.
    assert "| Transfer | – | 30.0 | 22.5 | 26.2 |" in text
    assert "| Last | 35.0 | 70.0 | 90.0 | 65.0 |" in text
    assert "![accuracy_matrix](plots/accuracy_matrix.png)" in text
    assert "![curve](curve.png)" in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temp files left behind
    assert render_report("Run: zscl", [], tmp_path) == "# Run: zscl\n"


def test_image_links_for_cwd_relative_and_run_relative_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = Path("runs") / "demo"
    text = render_report(
        "t",
        [Section("s", images=[run_dir / "heat.png", "plots/curve.png", tmp_path / "elsewhere.png"])],
        run_dir,
    )
    assert "![heat](heat.png)" in text  # a path the caller can open, inside the run
    assert "![curve](plots/curve.png)" in text  # a name relative to the run folder
    assert "![elsewhere](../../elsewhere.png)" in text


def _png_shape(path: Path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path).shape


def test_heatmap_has_one_annotation_per_cell_with_the_values() -> None:
    acc = np.arange(16, dtype=float).reshape(4, 4) * 6.0
    fig = heatmap_figure(acc, ["a", "b", "c", "d"], "title")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 16
    assert texts == [f"{v:.1f}" for v in acc.ravel()]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["after a", "after b", "after c", "after d"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    assert ax.get_title() == "title"
    with pytest.raises(ValueError):
        heatmap_figure(acc, ["a", "b", "c"], "wrong names")


def test_accuracy_heatmap_writes_a_valid_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = accuracy_heatmap(
        rng.uniform(0, 100, (11, 11)), [f"d{i}" for i in range(11)], tmp_path / "sub" / "heat.png", "MTIL"
    )
    height, width, channels = _png_shape(path)
    assert channels in (3, 4) and width > 400 and height > 300
    assert sorted(p.name for p in path.parent.iterdir()) == ["heat.png"]


def test_curves_png_and_figure_content(tmp_path: Path) -> None:
    xs = [1, 2, 3]
    series = {"zscl": [80.0, 75.0, 70.0], "finetune": [80.0, 60.0, None]}
    fig = curves_figure(xs, series, "step", "accuracy (%)", "CIL")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["zscl", "finetune"]
    assert list(ax.get_lines()[0].get_ydata()) == [80.0, 75.0, 70.0]
    assert np.isnan(ax.get_lines()[1].get_ydata()[2])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "accuracy (%)")
    path = curves(xs, series, tmp_path / "c.png", "step", "accuracy (%)", "CIL")
    assert len(_png_shape(path)) == 3
    with pytest.raises(ValueError):
        curves_figure(xs, {"short": [1.0]}, "x", "y", "t")


def test_overwriting_a_png_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    curves([0, 1], {"a": [0.0, 1.0]}, path, "x", "y", "first")
    first = path.read_bytes()
    curves([0, 1, 2], {"a": [0.0, 1.0, 4.0], "b": [1.0, 1.0, 1.0]}, path, "x", "y", "second")
    assert path.read_bytes() != first and path.read_bytes()[:8] == PNG_MAGIC


def test_plotting_never_touches_pyplot_or_the_global_backend(tmp_path: Path) -> None:
    code = (
        "import sys, matplotlib\n"
        "from madapt.report.plots import curves\n"
        f"curves([0, 1], {{'a': [0.0, 1.0]}}, {str(tmp_path / 'x.png')!r}, 'x', 'y', 't')\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    env = {**os.environ, "MPLBACKEND": "", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "x.png").read_bytes()[:8] == PNG_MAGIC
