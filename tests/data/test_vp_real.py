"""VP target datasets in their standard layouts (madapt.data.vp_real) on tiny real-format fixtures."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import fixtures
import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.flowers102
import torchvision.datasets.svhn
import vp_fixtures as vf
from rich.console import Console

import madapt
from madapt.backbones.classifier import load_classifier
from madapt.data import vp_real
from madapt.data.templates import CLASSNAMES
from madapt.data.vp import TargetData, image_transform
from madapt.data.vp_real import ImageFiles, check_layout, load_real
from madapt.errors import DataError
from madapt.recipes import run_experiment
from madapt.runs import save_tensors

SIZE = 16
TF = image_transform(SIZE, center_crop=False)


def load(root: Path, name: str) -> TargetData:
    """The dataset with its splits as the files give them (no validation hold-out)."""
    return load_real(root, name, TF, holdout_val=False)


def _exists_only(fpath, md5=None) -> bool:
    return os.path.isfile(fpath)


@pytest.fixture(autouse=True)
def no_md5(monkeypatch):
    """torchvision md5-checks CIFAR, SVHN and Flowers files; fixtures cannot match the checksums."""
    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn, torchvision.datasets.flowers102):
        monkeypatch.setattr(module, "check_integrity", _exists_only)


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[Path, dict]:
    """Every VP dataset in its torchvision / official layout under one data_root."""
    root = tmp_path_factory.mktemp("official")
    facts = {name: write(root) for name, write in vf.OFFICIAL_WRITERS.items()}
    for name, write in (
        ("cifar100", fixtures.write_cifar100),
        ("dtd", fixtures.write_dtd),
        ("flowers102", fixtures.write_flowers),
        ("food101", fixtures.write_food),
        ("stanford_cars", fixtures.write_cars),
    ):
        facts[name] = write(root)
    return root, facts


@pytest.fixture(scope="module")
def vpt(tmp_path_factory) -> tuple[Path, dict]:
    """The five FGVC datasets with VPT's {train,val,test}.json in the official folders."""
    root = tmp_path_factory.mktemp("vpt")
    return root, {
        "cub200": vf.write_cub(root, vpt_json=True),
        "nabirds": vf.write_nabirds(root, vpt_json=True),
        "stanford_dogs": vf.write_dogs(root, vpt_json=True),
        "flowers102": vf.write_flowers_json(root),
        "stanford_cars": vf.write_cars_json(root),
    }


def _labels(dataset) -> list[int]:
    return [int(y) for y in dataset.targets]


def _assert_colour(dataset, i: int) -> None:
    """The image of sample i has the colour the fixture gave its label (image and label belong together)."""
    image, label = dataset[i]
    assert image.shape == (3, SIZE, SIZE)
    pixel = (image[:, SIZE // 2, SIZE // 2] * 255).round().tolist()
    assert all(abs(a - b) <= 6 for a, b in zip(pixel, vf.color_of(label))), (i, label, pixel)


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# ---------------------------------------------------------------------------------------------
# torchvision datasets


@pytest.mark.parametrize("name", ["cifar10", "svhn", "gtsrb"])
def test_torchvision_formats_give_official_splits_labels_and_names(official, name) -> None:
    root, facts = official
    data = load(root, name)
    for split in ("train", "test"):
        ds = getattr(data, split)
        assert _labels(ds) == facts[name]["labels"][split], split
        for i in (0, len(ds) - 1):
            _assert_colour(ds, i)
    expected = {
        "cifar10": facts["cifar10"].get("classes"),
        "svhn": [str(d) for d in range(10)],
        "gtsrb": list(vp_real.GTSRB_CLASSES),
    }[name]
    assert data.classnames == expected
    if name == "svhn":
        assert 0 in facts["svhn"]["labels"]["train"]  # stored as 10 in the .mat, read as digit 0
    if name == "gtsrb":
        assert len(data.classnames) == 43 and data.classnames[14] == "Stop"


def test_gtsrb_with_a_missing_class_folder_is_a_data_error(tmp_path) -> None:
    vf.write_gtsrb(tmp_path)
    for f in (tmp_path / "gtsrb" / "GTSRB" / "Training" / "00007").iterdir():
        f.unlink()
    (tmp_path / "gtsrb" / "GTSRB" / "Training" / "00007").rmdir()
    with pytest.raises(DataError, match="00007") as err:
        load(tmp_path, "gtsrb")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["cifar100", "dtd", "flowers102", "food101", "stanford_cars"])
def test_mtil_readers_are_reused_with_their_official_splits(official, name) -> None:
    root, facts = official
    data = load(root, name)
    sizes = {
        "cifar100": (40, 30),
        "dtd": (47, 94),
        "flowers102": (10, 10),
        "food101": (101, 101),
        "stanford_cars": (12, 8),
    }[name]
    assert (len(data.train), len(data.test)) == sizes
    if "labels" in facts[name] and isinstance(facts[name]["labels"], dict):
        assert _labels(data.train) == facts[name]["labels"]["train"]
        assert _labels(data.test) == facts[name]["labels"]["test"]
    if name == "flowers102":  # Flowers' files hold no names: the CLIP names of MTIL
        assert data.classnames == list(CLASSNAMES["flowers"])
        assert _labels(data.train) == [facts[name]["labels"][i - 1] for i in facts[name]["train_ids"]]
    if name == "dtd":  # partition 1: train = train1 only (1 per class here), test = test1
        assert data.classnames == list(CLASSNAMES["dtd"])
    assert not any("_" in c for c in data.classnames)
    _assert_colour(data.train, 0)


# ---------------------------------------------------------------------------------------------
# FGVC: official layouts


def test_cub_official_split_labels_and_names(official) -> None:
    root, facts = official
    data = load(root, "cub200")
    f = facts["cub200"]
    assert data.classnames == [
        "Black footed Albatross",
        "Laysan Albatross",
        "Sooty Albatross",
        "Groove billed Ani",
    ]
    assert _labels(data.train) == f["labels"]["train"] and _labels(data.test) == f["labels"]["test"]
    assert (len(data.train), len(data.test)) == (4 * 3, 4 * 2)  # is_training_image 1 / 0
    assert not set(data.train.paths) & set(data.test.paths)
    assert all(isinstance(d, ImageFiles) for d in (data.train, data.test))
    for i in range(len(data.test)):
        _assert_colour(data.test, i)


def test_nabirds_maps_sparse_leaf_ids_to_sorted_contiguous_labels(official) -> None:
    root, facts = official
    data = load(root, "nabirds")
    # leaf ids 295 < 313 < 401 < 817 < 1000 -> 0..4; inner nodes of classes.txt are not classes
    assert data.classnames == [
        "Common Loon",
        "Pacific Loon",
        "Red-tailed Hawk (Dark morph)",
        "Gray Jay",
        "Gray Catbird",
    ]
    assert _labels(data.train) == facts["nabirds"]["labels"]["train"]
    assert _labels(data.test) == facts["nabirds"]["labels"]["test"]
    assert _labels(data.train)[:2] == [3, 3]  # the first images listed are class 817 = Gray Jay
    assert not set(data.train.paths) & set(data.test.paths)
    _assert_colour(data.train, 0)


def test_stanford_dogs_reads_the_mat_lists(official) -> None:
    root, facts = official
    data = load(root, "stanford_dogs")
    f = facts["stanford_dogs"]
    assert data.classnames == f["names"]
    assert _labels(data.train) == f["labels"]["train"] and _labels(data.test) == f["labels"]["test"]
    assert [Path(p).relative_to(root / "stanford_dogs" / "Images").as_posix() for p in data.test.paths] == f[
        "paths"
    ]["test"]
    assert not set(data.train.paths) & set(data.test.paths)
    _assert_colour(data.test, 0)


def test_cub_archive_folder_is_found_directly_under_data_root(tmp_path) -> None:
    vf.write_cub(tmp_path, folder="CUB_200_2011")
    data = load(tmp_path, "cub200")
    assert (len(data.train), len(data.test)) == (12, 8)
    rows = {n: m for n, _, m in check_layout(tmp_path, ["cub200"])}
    assert rows["cub200"] == f"found official layout in {tmp_path / 'CUB_200_2011'}"


# ---------------------------------------------------------------------------------------------
# FGVC: VPT's json splits


@pytest.mark.parametrize("name", ["cub200", "nabirds", "stanford_dogs", "flowers102", "stanford_cars"])
def test_vpt_json_splits_train_on_train_json_and_test_on_test_json(vpt, name) -> None:
    root, facts = vpt
    data = load(root, name)
    splits = facts[name]["json"]
    assert (len(data.train), len(data.test)) == (len(splits["train"]), len(splits["test"]))
    folder = root / name
    image_dir = folder / vp_real.FGVC[name].image_dir
    rel = {
        s: {Path(p).relative_to(image_dir).as_posix() for p in getattr(data, s).paths}
        for s in ("train", "test")
    }
    assert rel["train"] == set(splits["train"]) and rel["test"] == set(splits["test"])
    assert not rel["train"] & set(splits["val"]) and not rel["test"] & set(splits["val"])  # val is unused
    # VPT maps class ids to 0..K-1 in sorted order; every fixture image's colour is that index
    ids = sorted({c for s in splits.values() for c in s.values()})
    assert _labels(data.train) == [ids.index(c) for c in splits["train"].values()]
    for i in (0, len(data.test) - 1):
        _assert_colour(data.test, i)
    expected = {
        "cub200": ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross", "Groove billed Ani"],
        "nabirds": [
            "Common Loon",
            "Pacific Loon",
            "Red-tailed Hawk (Dark morph)",
            "Gray Jay",
            "Gray Catbird",
        ],
        "stanford_dogs": ["Chihuahua", "Afghan hound", "curly-coated retriever"],
        "flowers102": list(CLASSNAMES["flowers"]),
        "stanford_cars": facts["stanford_cars"].get("names"),
    }[name]
    assert data.classnames == expected


def test_json_wins_over_the_official_files_in_the_same_folder(vpt) -> None:
    root, facts = vpt  # write_cub(vpt_json=True) wrote the official files too
    assert (root / "cub200" / "images.txt").is_file()
    assert len(load(root, "cub200").train) == len(facts["cub200"]["json"]["train"]) == 8


def test_json_sharing_images_between_train_and_test_is_a_data_error(tmp_path) -> None:
    facts = vf.write_cub(tmp_path, vpt_json=True)
    leaked = {**facts["json"]["test"], **dict(list(facts["json"]["train"].items())[:1])}
    (tmp_path / "cub200" / "test.json").write_text(json.dumps(leaked))
    with pytest.raises(DataError, match="share 1 images") as err:
        load(tmp_path, "cub200")
    assert "\n" not in str(err.value)


def test_json_with_a_non_integer_class_id_is_a_data_error(tmp_path) -> None:
    vf.write_cub(tmp_path, vpt_json=True)
    (tmp_path / "cub200" / "test.json").write_text('{"001.Black_footed_Albatross/x.jpg": "bird"}')
    with pytest.raises(DataError, match=r"test\.json.*integer class id"):
        load(tmp_path, "cub200")


# ---------------------------------------------------------------------------------------------
# fallback and errors


def test_image_folder_tree_is_the_fallback(tmp_path) -> None:
    facts = vf.write_image_folder(tmp_path, "cub200")
    data = load(tmp_path, "cub200")
    assert data.classnames == facts["classes"]
    assert (len(data.train), len(data.test)) == (facts["sizes"]["train"], facts["sizes"]["test"])
    _assert_colour(data.train, len(data.train) - 1)
    vf.write_image_folder(tmp_path, "my_dataset", ("x", "y"))  # names outside the VP list: folders only
    assert load(tmp_path, "my_dataset").classnames == ["x", "y"]
    assert check_layout(tmp_path, ["cub200"]) == [
        ("cub200", True, f"found ImageFolder tree {tmp_path / 'cub200'}")
    ]


MISSING = [
    ("cifar10", "cifar-10-batches-py/test_batch"),
    ("svhn", "svhn/test_32x32.mat"),
    ("gtsrb", "gtsrb/GT-final_test.csv"),
    ("cub200", "cub200/train_test_split.txt"),
    ("cub200", "cub200/classes.txt"),
    ("nabirds", "nabirds/image_class_labels.txt"),
    ("stanford_dogs", "stanford_dogs/test_list.mat"),
    ("cifar100", "cifar-100-python/meta"),
    ("dtd", "dtd/dtd/labels/test1.txt"),
    ("flowers102", "flowers-102/setid.mat"),
    ("food101", "food-101/meta/test.json"),
]
WRITERS = {
    **vf.OFFICIAL_WRITERS,
    "cifar100": fixtures.write_cifar100,
    "dtd": fixtures.write_dtd,
    "flowers102": fixtures.write_flowers,
    "food101": fixtures.write_food,
}


@pytest.mark.parametrize(("name", "rel"), MISSING)
def test_a_missing_file_is_one_line_naming_it_and_the_layout(tmp_path, name, rel) -> None:
    WRITERS[name](tmp_path)
    (tmp_path / rel).unlink()
    before = _files(tmp_path)
    with pytest.raises(DataError) as err:
        load(tmp_path, name)
    message = err.value.one_line()
    assert str(err.value) == message and "\n" not in message
    assert str(tmp_path / rel) in message and "expected <data_root>/" in message
    assert f"<data_root>/{name}/{{train,test}}/<class>/<image>" in message  # the fallback is named too
    assert _files(tmp_path) == before  # nothing created


@pytest.mark.parametrize(
    ("name", "rel"), [("cub200", "cub200/test.json"), ("stanford_dogs", "stanford_dogs/Images")]
)
def test_incomplete_vpt_json_folder_names_the_missing_part(tmp_path, name, rel) -> None:
    {"cub200": vf.write_cub, "stanford_dogs": vf.write_dogs}[name](tmp_path, vpt_json=True)
    target = tmp_path / rel
    if target.is_dir():
        target.rename(tmp_path / "elsewhere")
    else:
        target.unlink()
    with pytest.raises(DataError, match=str(target)):
        load(tmp_path, name)


def test_a_listed_image_that_is_missing_is_named(tmp_path) -> None:
    facts = vf.write_cub(tmp_path)
    image = tmp_path / "cub200" / "images" / facts["paths"]["test"][-1]
    image.unlink()
    with pytest.raises(DataError, match="images.txt") as err:
        load(tmp_path, "cub200")
    assert str(image) in str(err.value)


def test_empty_or_missing_data_root(tmp_path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'cub200'} is missing"):
        load(tmp_path, "cub200")
    with pytest.raises(DataError, match="data_root"):
        load(tmp_path / "nowhere", "cub200")
    assert not (tmp_path / "nowhere").exists() and not list(tmp_path.iterdir())


def test_check_layout_reports_each_dataset(official, tmp_path) -> None:
    root, _ = official
    rows = check_layout(root)
    assert [r[0] for r in rows] == list(vp_real.VP_DATASETS) and all(ok for _, ok, _ in rows)
    assert {n: m for n, _, m in rows}["cub200"] == f"found official layout in {root / 'cub200'}"
    empty = check_layout(tmp_path)
    assert not any(ok for _, ok, _ in empty)
    assert all(m.startswith("missing ") and "expected" in m for _, _, m in empty)


# ---------------------------------------------------------------------------------------------
# end to end


def test_vp_preset_runs_on_a_cub_fixture(tmp_path) -> None:
    """vp/otlm_vitb22k_cub200 with a tiny in21k ViT: CUB with VPT's json splits reaches the label
    mapping, and the reported epoch is chosen on val.json."""
    facts = vf.write_cub(tmp_path / "data", vpt_json=True)
    torch.manual_seed(0)
    weights = tmp_path / "vit.safetensors"
    save_tensors(weights, load_classifier("madapt-tiny-vit-in21k").model.state_dict())
    args = [
        f"data.data_root={tmp_path / 'data'}",
        f"weights={weights}",
        "backbone=madapt-tiny-vit-in21k",
        "train.epochs=1",
        "train.batch_size=8",
        "train.num_workers=0",
        "eval_batch_size=16",
        "prompt.pad=4",
    ]
    results = run_experiment(
        "vp/otlm_vitb22k_cub200", args, tmp_path / "run", False, Console(file=io.StringIO(), width=120)
    )
    assert results["classnames"][0] == "Black footed Albatross"
    assert results["train_images"] == len(facts["json"]["train"]) and results["val_images"] == len(
        facts["json"]["val"]
    )
    otlm = results["variants"]["otlm"]
    assert len(set(otlm["mapping"])) == 4 and max(otlm["mapping"]) < 21843
    assert 0.0 <= otlm["accuracy"] <= 100.0 and len(otlm["history"]) == 1
    assert otlm["selection"] == "best_val" and "val_accuracy" in otlm["history"][0]
    assert "Black footed Albatross" in (tmp_path / "run" / "report.md").read_text()
    assert np.isfinite(otlm["history"][0]["loss"])


def test_cli_data_check_vp(official, tmp_path) -> None:
    """`madapt data check vp` lists the VP datasets; an unknown collection is one line, exit 2."""
    import subprocess
    import sys

    root, _ = official
    env = {**os.environ, "PYTHONPATH": str(Path(madapt.__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "madapt.cli", "data", "check"]
    ok = subprocess.run(
        [*cmd, "vp", "--root", str(root)], env=env, capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0 and f"ok      cub200: found official layout in {root / 'cub200'}" in ok.stdout
    missing = subprocess.run(
        [*cmd, "vp", "--root", str(tmp_path)], env=env, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 1 and "MISSING cub200" in missing.stdout
    bad = subprocess.run(
        [*cmd, "vpp", "--root", str(root)], env=env, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "'vp'" in bad.stderr


def test_validation_splits_are_the_official_ones_or_table_6_2_hold_outs(
    official, vpt, monkeypatch, tmp_path
) -> None:
    """DTD val1 / Flowers valid / VPT val.json when the layout has one; else a stratified hold-out."""
    root, facts = official
    flowers = load_real(root, "flowers102", TF)
    valid_ids = list(range(2, 31, 3))  # the fixture's setid.mat 'valid' ids (1-based)
    assert _labels(flowers.val) == [facts["flowers102"]["labels"][i - 1] for i in valid_ids]
    fixtures.write_dtd(tmp_path)
    labels = tmp_path / "dtd" / "dtd" / "labels"
    assert load_real(tmp_path, "dtd", TF).val is None  # no val1.txt: no validation split, nothing invented
    (labels / "val1.txt").write_text((labels / "train1.txt").read_text())
    dtd = load_real(tmp_path, "dtd", TF)
    assert len(dtd.val) == 47 and _labels(dtd.val) == _labels(dtd.train)
    vroot, vfacts = vpt
    cub = load_real(vroot, "cub200", TF)
    assert len(cub.train) == len(vfacts["cub200"]["json"]["train"]) and len(cub.val) == len(
        vfacts["cub200"]["json"]["val"]
    )
    monkeypatch.setitem(vp_real.VAL_HOLDOUT, "cifar10", 5)
    whole = load(root, "cifar10")
    held = load_real(root, "cifar10", TF)
    assert (len(held.train), len(held.val)) == (len(whole.train) - 5, 5)
    assert sorted(held.train.indices + held.val.indices) == list(range(len(whole.train)))
    assert _labels(held.val) == [whole.train.targets[i] for i in held.val.indices]  # labels travel along
    again = load_real(root, "cifar10", TF)
    assert again.val.indices == held.val.indices  # fixed seed: every run and mapper, the same split
    _assert_colour(held.val, 0)
    assert load(root, "cifar10").val is None  # holdout_val=False: the official training set
    with pytest.raises(DataError, match="more than the"):
        monkeypatch.setitem(vp_real.VAL_HOLDOUT, "cifar10", 10_000)
        load_real(root, "cifar10", TF)
