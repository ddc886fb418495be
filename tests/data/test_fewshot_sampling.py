"""Few-shot subsampling (seed 002 §5: 5 shots per class) and cheap label reading."""

from __future__ import annotations

from collections import Counter

import pytest
from fixtures import write_cars, write_mnist, write_pets, write_sun397
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from madapt.data.fewshot import few_shot_indices, few_shot_subset, labels_of
from madapt.data.mtil import load_split
from madapt.errors import DataError


class _NoImages(Dataset):
    """Labels only through __getitem__, counting how often it is called."""

    def __init__(self, labels):
        self.labels, self.calls = labels, 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.calls += 1
        return None, self.labels[i]


def test_k_per_class_deterministic_and_seed_dependent():
    labels = [i % 4 for i in range(40)] + [0] * 5
    a = few_shot_indices(labels, shots=5, seed=1)
    assert a == few_shot_indices(labels, shots=5, seed=1) and a == sorted(a)
    assert Counter(labels[i] for i in a) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert len(set(a)) == 20
    assert a != few_shot_indices(labels, shots=5, seed=2)


def test_all_images_when_shots_equal_class_size():
    labels = [0, 1, 0, 1]
    assert few_shot_indices(labels, shots=2, seed=0) == [0, 1, 2, 3]


def test_shots_larger_than_smallest_class():
    labels = [0] * 6 + [1] * 3 + [2] * 6
    with pytest.raises(DataError) as err:
        few_shot_indices(labels, shots=5, seed=0, dataset="mtil/dtd", classnames=["a", "bumpy", "c"])
    msg = err.value.one_line()
    assert "mtil/dtd" in msg and "class 1 'bumpy' has only 3 images" in msg and "(5)" in msg


@pytest.mark.parametrize("labels,shots", [([], 1), ([0, 1], 0)])
def test_empty_or_nonpositive(labels, shots):
    with pytest.raises(DataError):
        few_shot_indices(labels, shots=shots, seed=0)


def test_labels_of_fallback_and_subset():
    ds = _NoImages([2, 0, 1, 2])
    assert labels_of(ds) == [2, 0, 1, 2] and ds.calls == 4
    assert labels_of(Subset(ds, [3, 1])) == [2, 0]


def test_labels_of_reads_torchvision_metadata_without_images(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    write_cars(tmp_path)
    write_pets(tmp_path)
    write_sun397(tmp_path)
    datasets = {
        "targets (tensor)": tvd.MNIST(tmp_path, train=True),
        "_samples": tvd.StanfordCars(tmp_path, split="train"),
        "_labels": tvd.OxfordIIITPet(tmp_path, split="test"),
        "_labels (sun)": tvd.SUN397(tmp_path),
    }
    for name, ds in datasets.items():
        expected = [int(ds[i][1]) for i in range(len(ds))]
        monkeypatch.setattr(type(ds), "__getitem__", lambda self, i: 1 / 0)
        assert labels_of(ds) == expected, name
        monkeypatch.undo()


def test_few_shot_subset_of_a_loaded_split(tmp_path):
    write_pets(tmp_path, train_per=3)
    ds = load_split("oxford_pet", tmp_path, "train")
    sub = few_shot_subset(ds, shots=2, seed=42, name=ds.name)
    assert len(sub) == 74 and Counter(labels_of(sub)) == {c: 2 for c in range(37)}
    with pytest.raises(DataError) as err:
        few_shot_subset(ds, shots=4, seed=42, name=ds.name)
    assert "mtil/oxford_pet" in err.value.one_line() and "'Breed A0'" in err.value.one_line()
