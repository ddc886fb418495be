"""CIL protocol: class orders, step splits (seed 000 §3.5.1.1) and class-subset views."""

from __future__ import annotations

import os

import pytest
import torchvision.datasets.cifar
from fixtures import write_cifar100, write_tinyimagenet

from madapt.data.cil import (
    CIFAR100_ORDER,
    CIL_SETTINGS,
    TINYIMAGENET_ORDER,
    ClassSubset,
    cil_protocol,
    cil_steps,
)
from madapt.data.fewshot import labels_of
from madapt.data.mtil import load_split
from madapt.errors import ConfigError


def test_class_orders_are_permutations():
    assert sorted(CIFAR100_ORDER) == list(range(100))
    assert sorted(TINYIMAGENET_ORDER) == list(range(200))
    assert CIFAR100_ORDER[:5] == (87, 0, 52, 58, 44) and CIFAR100_ORDER[-1] == 39
    assert TINYIMAGENET_ORDER[:3] == (131, 181, 22) and TINYIMAGENET_ORDER[-1] == 98


@pytest.mark.parametrize(
    "setting,n_tasks,sizes",
    [
        ("cifar100/10", 10, {10}),
        ("cifar100/20", 20, {5}),
        ("cifar100/50", 50, {2}),
        ("tinyimagenet/5", 6, {100, 20}),
        ("tinyimagenet/10", 11, {100, 10}),
        ("tinyimagenet/20", 21, {100, 5}),
    ],
)
def test_protocol_step_counts(setting, n_tasks, sizes):
    steps = cil_protocol(setting)
    order = CIL_SETTINGS[setting][3]
    assert len(steps) == n_tasks and {len(s) for s in steps} == sizes
    assert [c for s in steps for c in s] == list(order)  # disjoint, cover all, in order


def test_tinyimagenet_base_step_is_first_100_of_order():
    steps = cil_protocol("tinyimagenet/10")
    assert steps[0] == list(TINYIMAGENET_ORDER[:100])
    assert steps[1] == list(TINYIMAGENET_ORDER[100:110])


def test_cil_steps_n_steps_equals_increment():
    assert cil_steps(200, 100, n_steps=20) == cil_steps(200, 100, increment=5)
    assert cil_steps(6, 0, increment=2) == [[0, 1], [2, 3], [4, 5]]
    assert cil_steps(5, 1, increment=2, class_order=[4, 3, 2, 1, 0]) == [[4], [3, 2], [1, 0]]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_classes=10, base=0, increment=None, n_steps=None),
        dict(n_classes=10, base=0, increment=2, n_steps=5),
        dict(n_classes=10, base=0, n_steps=3),
        dict(n_classes=10, base=10, increment=1),
        dict(n_classes=10, base=0, increment=0),
        dict(n_classes=3, base=0, increment=1, class_order=[0, 1, 1]),
    ],
)
def test_cil_steps_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        cil_steps(**kwargs)


def test_unknown_setting():
    with pytest.raises(ConfigError):
        cil_protocol("cifar100/7")


def test_class_subset_relabels_by_order():
    labels = [0, 1, 2, 3, 0, 1, 2, 3]
    data = [(f"img{i}", y) for i, y in enumerate(labels)]
    order = [3, 1, 0, 2]
    view = ClassSubset(data, labels, classes=[3, 1], class_order=order, classnames=["a", "b", "c", "d"])
    assert view.indices == [1, 3, 5, 7]
    assert view.targets == [1, 0, 1, 0]  # class 3 -> 0, class 1 -> 1
    assert view[1] == ("img3", 0) and len(view) == 4
    assert view.classnames == ["d", "b"]
    seen = ClassSubset(data, labels, classes=[3, 1, 0], class_order=order)
    assert sorted(set(seen.targets)) == [0, 1, 2] and labels_of(seen) == seen.targets


def test_cil_views_on_real_format_fixtures(tmp_path, monkeypatch):
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )
    write_cifar100(tmp_path, train=200, test=100)
    write_tinyimagenet(tmp_path, train_per=1, val=10)
    cifar = load_split("cil/cifar100", tmp_path, "train")
    steps = cil_protocol("cifar100/10")
    first = ClassSubset(cifar, cifar.targets, steps[0], CIFAR100_ORDER, cifar.classnames)
    assert len(first) == sum(1 for y in cifar.targets if y in set(steps[0]))
    assert set(first.targets) <= set(range(10)) and len(first) > 0
    assert first.classnames[0] == cifar.classnames[87]
    _, label = first[0]
    assert CIFAR100_ORDER[label] == cifar.targets[first.indices[0]]
    tiny = load_split("cil/tinyimagenet", tmp_path, "train")
    base = ClassSubset(tiny, tiny.targets, cil_protocol("tinyimagenet/5")[0], TINYIMAGENET_ORDER)
    assert len(base) == 100 and sorted(base.targets) == list(range(100))
