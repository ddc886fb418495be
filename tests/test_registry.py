"""The name registry: registration, lookup with suggestions, duplicate protection."""

import pytest

from madapt import catalog
from madapt.errors import UnknownNameError
from madapt.registry import build, get, names, register


def test_register_build_and_list():
    @register("test_kind", "double")
    def double(x: int) -> int:
        return 2 * x

    assert build("test_kind", "double", x=4) == 8
    assert "double" in names("test_kind")
    assert get("test_kind", "double") is double


def test_unknown_name_suggests_the_closest():
    register("test_kind2", "finetune")(object)
    with pytest.raises(UnknownNameError, match="did you mean 'finetune'"):
        get("test_kind2", "fintune")


def test_a_name_cannot_be_taken_twice():
    register("test_kind3", "a")(int)
    with pytest.raises(ValueError, match="registered twice"):
        register("test_kind3", "a")(float)


def test_catalog_registers_every_area():
    catalog.load_all()
    assert {"zscl", "lwf", "finetune"} <= set(names("method"))
    assert {"micro-clip", "ViT-B-16", "madapt-tiny-ViT-B-16"} <= set(names("backbone"))
    assert {"mtil/dtd", "micro/digit", "cil/cifar100"} <= set(names("dataset"))
    assert {"flm", "ilm", "otlm", "hardcoded", "random"} <= set(names("mapper"))
    assert "continual" in names("recipe")
