"""Every MTIL/CIL loader on tiny fixtures in the real on-disk formats (tests/data/fixtures.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.flowers102
from fixtures import EUROSAT_FOLDERS, WRITERS, color_of
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from madapt.data import mtil
from madapt.data.mtil import check_layout, expected_layout, load_split, spec_of
from madapt.data.templates import CLASSNAMES, N_CLASSES, TEMPLATES
from madapt.errors import ConfigError, DataError, UnknownNameError
from madapt.registry import build, names


def _exists_only(fpath, md5=None) -> bool:
    return os.path.isfile(fpath)


@pytest.fixture(autouse=True)
def no_md5(monkeypatch):
    """torchvision md5-checks the real CIFAR-100 pickles and Flowers .mat files; fixtures cannot
    match those checksums, so only in tests the check becomes an existence check."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", _exists_only)
    monkeypatch.setattr(torchvision.datasets.flowers102, "check_integrity", _exists_only)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("data_root")
    facts = {name: write(root) for name, write in WRITERS.items()}
    return root, facts


def _pixel(image) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(image)[4, 4])


def _assert_color(image, label: int) -> None:
    assert all(abs(a - b) <= 4 for a, b in zip(_pixel(image), color_of(label))), (label,)


def test_registered_names_and_specs():
    registered = names("dataset")
    for key in mtil.ORDER_I:
        assert f"mtil/{key}" in registered
        spec = build("dataset", f"mtil/{key}")
        assert spec is spec_of(key)
        assert spec.templates and all("{}" in t for t in spec.templates)
    assert {"cil/cifar100", "cil/tinyimagenet"} <= set(registered)
    assert sorted(mtil.ORDER_I) == sorted(mtil.ORDER_II) and len(set(mtil.ORDER_II)) == 11
    assert sum(N_CLASSES[k] for k in mtil.ORDER_I) == 1201


def test_template_and_classname_facts():
    counts = {k: len(v) for k, v in TEMPLATES.items()}
    assert counts == {
        "aircraft": 2,
        "caltech101": 34,
        "cifar100": 18,
        "dtd": 8,
        "eurosat": 3,
        "flowers": 1,
        "food": 1,
        "mnist": 1,
        "oxford_pet": 1,
        "stanford_cars": 9,
        "sun397": 2,
        "cil_cifar100": 1,
        "cil_tinyimagenet": 1,
    }
    assert TEMPLATES["eurosat"][0].format("forest") == "a centered satellite photo of forest."
    assert TEMPLATES["mnist"][0].format("0 - zero") == 'a photo of the number: "0 - zero".'
    for key, classnames in CLASSNAMES.items():
        assert len(classnames) == N_CLASSES[key] == len(set(classnames)), key
        assert not any("_" in c for c in classnames)
    assert CLASSNAMES["caltech101"][:2] == ("off-center face", "centered face")
    assert CLASSNAMES["eurosat"][0] == "annual crop land"


@pytest.mark.parametrize("key", ["aircraft", "cifar100", "food", "mnist", "stanford_cars"])
def test_official_split_labels_follow_files(world, key):
    root, facts = world
    for split in ("train", "test"):
        ds = load_split(key, root, split)
        expected = facts[key]["labels"][split]
        assert ds.targets == expected and len(ds) == len(expected)
        assert len(ds.classnames) == N_CLASSES[key]
        for i in (0, len(ds) - 1):
            image, label = ds[i]
            assert label == expected[i] and image.mode == "RGB"
            if key != "mnist":
                _assert_color(image, label)


def test_aircraft_labels_follow_variants_file_order(world):
    root, facts = world
    ds = load_split("aircraft", root, "train")
    assert ds.classnames == facts["aircraft"]["variants"]  # not sorted
    assert ds.classnames != sorted(ds.classnames)


def test_mnist_images_and_names(world):
    root, facts = world
    ds = load_split("mnist", root, "test")
    image, label = ds[3]
    assert image.size == (28, 28) and _pixel(image) == (label * 20,) * 3
    assert ds.classnames[0] == "0 - zero"


def test_cifar100_names_are_torchvision_names_with_spaces(world):
    root, _ = world
    ds = load_split("cifar100", root, "train")
    assert ds.classnames == list(CLASSNAMES["cifar100"]) and "aquarium fish" in ds.classnames


def test_cars_classes_from_devkit(world):
    root, facts = world
    ds = load_split("stanford_cars", root, "test")
    assert ds.classnames == facts["stanford_cars"]["names"]


def test_food_names_underscores_to_spaces(world):
    root, _ = world
    ds = load_split("food", root, "train")
    assert ds.classnames[:2] == ["dish 000", "dish 001"] and len(ds) == 101
    _assert_color(ds[5][0], ds.targets[5])


def test_dtd_partition_one(world):
    root, _ = world
    train, test = load_split("dtd", root, "train"), load_split("dtd", root, "test")
    assert (len(train), len(test)) == (47, 94)
    assert train.classnames == list(CLASSNAMES["dtd"])
    assert sorted(set(test.targets)) == list(range(47))
    _assert_color(*test[50])


def test_pets_trainval_is_train(world):
    root, facts = world
    train, test = load_split("oxford_pet", root, "train"), load_split("oxford_pet", root, "test")
    assert (len(train), len(test)) == (74, 37)
    assert train.classnames[0] == "Breed A0"  # torchvision title-cases the breed
    _assert_color(*train[9])


def test_flowers_official_split_and_clip_names(world):
    root, facts = world
    train, test = load_split("flowers", root, "train"), load_split("flowers", root, "test")
    labels = facts["flowers"]["labels"]
    assert train.targets == [labels[i - 1] for i in facts["flowers"]["train_ids"]]
    assert test.targets == [labels[i - 1] for i in facts["flowers"]["test_ids"]]
    assert train.classnames[0] == "pink primrose" and len(train.classnames) == 102
    _assert_color(*train[4])


@pytest.mark.parametrize("key", ["caltech101", "eurosat", "sun397"])
def test_random_split_is_zscl_80_20(world, key):
    root, facts = world
    n = facts[key]["n"]
    train, test = load_split(key, root, "train"), load_split(key, root, "test")
    # ZSCL split_dataset: train = int(0.8 * n) (truncation, not rounding), seed-42 randperm
    assert len(train) == int(0.8 * n) and len(test) == n - int(0.8 * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(42)).tolist()
    assert train.indices == perm[: int(0.8 * n)] and test.indices == perm[int(0.8 * n) :]
    assert sorted(train.indices + test.indices) == list(range(n))
    again = load_split(key, root, "train")
    assert again.indices == train.indices and again.targets == train.targets
    _assert_color(*train[0])


def test_truncation_differs_from_rounding_on_sun_fixture(world):
    _, facts = world
    n = facts["sun397"]["n"]
    assert int(0.8 * n) != round(0.8 * n)  # the fixture size really tells the two apart


def test_caltech_and_eurosat_label_order(world):
    root, facts = world
    ds = load_split("eurosat", root, "test")
    assert ds.classnames == list(CLASSNAMES["eurosat"])
    full = [facts["eurosat"]["labels"][i] for i in ds.indices]
    assert ds.targets == full
    cal = load_split("caltech101", root, "train")
    assert cal.targets == [facts["caltech101"]["labels"][i] for i in cal.indices]
    assert cal.classnames[0] == "off-center face"


def test_sun397_sorted_files_and_names(world):
    root, facts = world
    ds = load_split("sun397", root, "train")
    files = [str(p) for p in ds.base._image_files]
    assert files == sorted(files)
    assert ds.classnames[0] == "scene 000/outdoor" and len(ds.classnames) == 397


def test_transform_receives_rgb(world):
    root, _ = world
    seen = []
    ds = load_split("mnist", root, "train", transform=lambda im: seen.append(im.mode) or 7)
    assert ds[0] == (7, ds.targets[0]) and seen == ["RGB"]


def test_batches_through_dataloader_and_pickle(world):
    root, _ = world
    ds = load_split("mnist", root, "train", transform=ToTensor())
    images, labels = next(iter(DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 28, 28) and labels.tolist() == ds.targets[:4]
    clone = pickle.loads(pickle.dumps(load_split("dtd", root, "test", transform=ToTensor())))
    assert clone[3][0].shape == (3, 8, 8) and clone.targets[3] == 1


def test_tinyimagenet(world):
    root, facts = world
    train = load_split("cil/tinyimagenet", root, "train")
    test = load_split("tinyimagenet", root, "test")
    assert len(train) == 200 and train.targets == list(range(200))
    assert test.targets == facts["tinyimagenet"]["val_labels"]
    assert train.classnames[:2] == ["thing 0", "thing 1"]
    _assert_color(*test[7])
    assert spec_of("cil/tinyimagenet").templates == ["a bad photo of a {}."]


def test_check_layout_reports_each_dataset(world, tmp_path):
    root, _ = world
    rows = check_layout("mtil", root)
    assert [r[0] for r in rows] == [f"mtil/{k}" for k in mtil.ORDER_I]
    assert all(ok for _, ok, _ in rows)
    deep = dict((n, (ok, m)) for n, ok, m in check_layout("cil", root, deep=True))
    assert deep["cil/cifar100"] == (True, f"found {root / 'cifar-100-python'} (train 40, test 30 images)")
    WRITERS["dtd"](tmp_path)
    rows = dict((n, (ok, m)) for n, ok, m in check_layout("mtil", tmp_path))
    assert rows["mtil/dtd"][0] and not rows["mtil/food"][0]
    assert rows["mtil/food"][1].startswith(f"missing {tmp_path / 'food-101'}; expected")
    assert "meta/train.json" in rows["mtil/food"][1]
    with pytest.raises(ConfigError):
        check_layout("mtl", root)


def test_expected_layout_names_torchvision_folders():
    assert expected_layout("dtd").startswith("<data_root>/dtd/dtd/")
    assert "MNIST/raw/" in expected_layout("mnist")
    assert "cars_test_annos_withlabels.mat" in expected_layout("stanford_cars")
    for spec in mtil.SPECS.values():
        assert "\n" not in spec.layout and spec.layout.startswith(spec.folder + "/")


# ---- errors: one line naming dataset, path and expected layout -------------------------------


def test_missing_data_root(tmp_path):
    with pytest.raises(DataError) as err:
        load_split("dtd", tmp_path / "nope", "train")
    assert str(tmp_path / "nope") in err.value.one_line()


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_split("food", tmp_path, "train")
    msg = err.value.one_line()
    assert "mtil/food" in msg and str(tmp_path / "food-101") in msg and "folder is missing" in msg
    assert "meta/train.json" in msg and "\n" not in str(err.value)
    assert not (tmp_path / "food-101").exists()


def test_caltech_does_not_create_folders_when_missing(tmp_path):
    with pytest.raises(DataError):
        load_split("caltech101", tmp_path, "train")
    assert list(tmp_path.iterdir()) == []  # torchvision's Caltech101 would mkdir


def test_missing_file_inside_dataset(tmp_path):
    WRITERS["mnist"](tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_split("mnist", tmp_path, "train")
    assert "t10k-labels-idx1-ubyte: is missing" in err.value.one_line()


def test_empty_split(tmp_path):
    WRITERS["aircraft"](tmp_path, test=0)
    assert len(load_split("aircraft", tmp_path, "train")) == 30
    with pytest.raises(DataError) as err:
        load_split("aircraft", tmp_path, "test")
    assert "split 'test' is empty" in err.value.one_line()
    assert "mtil/aircraft" in err.value.one_line()


@pytest.mark.parametrize(
    "key,kwargs,found",
    [
        ("dtd", {"classes": list(CLASSNAMES["dtd"])[:46]}, "has 46 classes but the spec has 47"),
        ("food", {"n_classes": 100}, "has 100 classes but the spec has 101"),
        ("stanford_cars", {"n_classes": 195}, "has 195 classes but the spec has 196"),
        ("sun397", {"n_classes": 398}, "has 398 classes but the spec has 397"),
        ("tinyimagenet", {"n_classes": 100, "val": 5}, "has 100 classes but the spec has 200"),
        ("caltech101", {"n_classes": 100}, "has 100 classes but the spec has 101"),
        ("flowers", {"n_classes": 300, "n_images": 60}, "has label 297 but the spec has 102 classes"),
    ],
)
def test_class_count_mismatch(tmp_path, key, kwargs, found):
    WRITERS[key](tmp_path, **kwargs)
    with pytest.raises(DataError) as err:
        load_split(key, tmp_path, "train")
    assert found in err.value.one_line() and spec_of(key).name in err.value.one_line()


def test_class_list_differs_from_reference(tmp_path):
    classes = list(CLASSNAMES["dtd"])
    classes[3] = "bubblY"
    WRITERS["dtd"](tmp_path, classes=sorted(classes))
    with pytest.raises(DataError) as err:
        load_split("dtd", tmp_path, "train")
    assert "but the spec says" in err.value.one_line()


def test_unreadable_files_become_data_error(tmp_path):
    WRITERS["eurosat"](tmp_path)
    for folder in EUROSAT_FOLDERS:  # class folders without images: ImageFolder refuses them
        for image in (tmp_path / "eurosat" / "2750" / folder).iterdir():
            image.unlink()
    with pytest.raises(DataError) as err:
        load_split("eurosat", tmp_path, "train")
    assert "cannot be read (FileNotFoundError" in err.value.one_line()


def test_real_md5_checks_stay_on_outside_tests(tmp_path, monkeypatch):
    WRITERS["cifar100"](tmp_path)
    WRITERS["flowers"](tmp_path)
    assert len(load_split("cifar100", tmp_path, "test")) == 30
    monkeypatch.undo()  # back to torchvision's md5 check: fixture files do not match it
    for key in ("cifar100", "flowers"):
        with pytest.raises(DataError) as err:
            load_split(key, tmp_path, "train")
        assert "cannot be read (RuntimeError" in err.value.one_line()


def test_unknown_dataset_and_split(world):
    root, _ = world
    with pytest.raises(UnknownNameError) as err:
        load_split("mtil/dtdd", root, "train")
    assert "did you mean" in err.value.one_line()
    with pytest.raises(ConfigError):
        load_split("dtd", root, "val")


def test_class_names_without_data():
    assert mtil.class_names("eurosat")[1] == "forest"
    with pytest.raises(DataError):
        mtil.class_names("sun397")
