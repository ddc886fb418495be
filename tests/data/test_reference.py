"""Reference data for distillation: image folder + captions (ZSCL: ImageNet train + CC)."""

from __future__ import annotations

import pytest
from fixtures import jpeg

from madapt.data.reference import ReferenceImages, load_reference, read_captions
from madapt.errors import DataError


def _imagenet_like(root):
    """ImageNet/train style: <wnid>/<file>.JPEG plus a nested png and a non-image file."""
    for wnid, n in (("n02", 2), ("n01", 1)):
        for k in range(n):
            path = root / wnid / f"{wnid}_{k}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(k))
    (root / "n01" / "deep").mkdir()
    (root / "n01" / "deep" / "x.png").write_bytes(jpeg(3))
    (root / "n01" / "notes.txt").write_text("not an image")


def test_images_recursive_sorted_rgb(tmp_path):
    _imagenet_like(tmp_path)
    ds = ReferenceImages(tmp_path, transform=lambda im: (im.mode, im.size))
    rel = [p.relative_to(tmp_path).as_posix() for p in ds.paths]
    assert rel == ["n01/deep/x.png", "n01/n01_0.JPEG", "n02/n02_0.JPEG", "n02/n02_1.JPEG"]
    assert ds[1] == ("RGB", (8, 8)) and len(ds) == 4


def test_captions_txt(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a dog on a beach\n\n  a red car  \n")
    assert read_captions(path) == ["a dog on a beach", "a red car"]


def test_captions_zscl_cc_file_is_tab_separated(tmp_path):
    path = tmp_path / "Validation_GCC-1.1.0-Validation_output.csv"
    path.write_text("title\tfilepath\nan old house\timg/1.jpg\na cat, sleeping\timg/2.jpg\n")
    assert read_captions(path) == ["an old house", "a cat, sleeping"]


def test_captions_csv_caption_column(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text('id,Caption\n1,"a tree, tall"\n2,a boat\n')
    assert read_captions(path) == ["a tree, tall", "a boat"]


def test_load_reference(tmp_path):
    _imagenet_like(tmp_path / "train")
    (tmp_path / "c.txt").write_text("one\ntwo\n")
    ref = load_reference(tmp_path / "train", tmp_path / "c.txt")
    assert len(ref.images) == 4 and ref.captions == ["one", "two"]
    assert ref.images[0].mode == "RGB"


@pytest.mark.parametrize(
    "setup,expected",
    [
        (lambda d: None, "folder does not exist"),
        (
            lambda d: (d / "imgs").mkdir() or (d / "imgs" / "a.txt").write_text("x"),
            "holds no .jpg/.jpeg/.png file",
        ),
    ],
)
def test_image_errors(tmp_path, setup, expected):
    setup(tmp_path)
    with pytest.raises(DataError) as err:
        ReferenceImages(tmp_path / "imgs")
    assert expected in err.value.one_line() and str(tmp_path / "imgs") in err.value.one_line()


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("missing.txt", None, "file does not exist"),
        ("empty.txt", "\n  \n", "contains no caption"),
        ("bad.csv", "id,url\n1,x\n", "has columns ['id', 'url']"),
    ],
)
def test_caption_errors(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as err:
        read_captions(path)
    assert expected in err.value.one_line() and str(path) in err.value.one_line()
