"""`madapt data download`: torchvision's downloaders fill the layout the loaders read; datasets
already on disk are left alone; a failed download says where to put the files by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
from fixtures import WRITERS
from torchvision import datasets as tvd

from madapt.data.mtil import check_layout, download, load_split
from madapt.errors import UnknownNameError

SRC = Path(__file__).resolve().parents[2] / "src"


def test_missing_dataset_is_fetched_by_torchvision_and_then_loads(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):  # what torchvision's MNIST.download leaves on disk
        calls.append(self.root)
        if not (Path(self.root) / "MNIST").exists():
            WRITERS["mnist"](Path(self.root))

    monkeypatch.setattr(tvd.MNIST, "download", fake_download)
    rows = download("mtil", tmp_path / "data", only=["mnist"])
    assert rows == [("mtil/mnist", True, f"downloaded to {tmp_path / 'data' / 'MNIST'}")]
    assert calls  # the torchvision downloader ran, into data_root itself
    assert all(Path(c) == tmp_path / "data" for c in calls)
    assert len(load_split("mnist", tmp_path / "data", "test")) == 10
    ok = {name: good for name, good, _ in check_layout("mtil", tmp_path / "data")}
    assert ok["mtil/mnist"] and not ok["mtil/dtd"]


def test_present_dataset_is_not_downloaded_again(tmp_path, monkeypatch):
    WRITERS["eurosat"](tmp_path)
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))

    def no_download(self):
        raise AssertionError("must not download a dataset that is present")

    monkeypatch.setattr(tvd.EuroSAT, "download", no_download)
    [row] = download("mtil", tmp_path, only=["eurosat"])
    assert row[1] and "already present" in row[2]
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_failed_download_names_the_layout_and_keeps_going(tmp_path, monkeypatch):
    def offline(self):
        (Path(self.root) / "fgvc-aircraft-2013b").mkdir()
        raise URLError("[Errno -3] Temporary failure in name resolution")

    def fake_dtd(self):  # torchvision's DTD extracts into <root>/dtd/dtd, once
        if not (Path(self.root) / "dtd").exists():
            WRITERS["dtd"](Path(self.root))

    monkeypatch.setattr(tvd.FGVCAircraft, "_download", offline)
    monkeypatch.setattr(tvd.DTD, "_download", fake_dtd)
    rows = download("mtil", tmp_path, only=["aircraft", "dtd"])
    assert [(name, ok) for name, ok, _ in rows] == [("mtil/aircraft", False), ("mtil/dtd", True)]
    assert not (tmp_path / "fgvc-aircraft-2013b").exists()  # no empty folders left behind
    message = rows[0][2]
    assert "name resolution" in message and "fgvc-aircraft-2013b/data/" in message and "\n" not in message


def test_unknown_dataset_key_is_refused_with_the_closest(tmp_path):
    with pytest.raises(UnknownNameError) as err:
        download("mtil", tmp_path, only=["eurosta"])
    assert "eurosat" in err.value.one_line()
    assert list(tmp_path.iterdir()) == []


def test_cli_exit_codes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    WRITERS["mnist"](tmp_path)
    cmd = [sys.executable, "-m", "madapt.cli", "data", "download", "mtil", "--root", str(tmp_path)]
    done = subprocess.run([*cmd, "--only", "mnist"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "ok     mtil/mnist: already present" in done.stdout
    bad = subprocess.run([*cmd, "--only", "mnistt"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "mnist" in bad.stderr
