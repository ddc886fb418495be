"""Config loading: presets, bases, overrides, and one precise error per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from madapt import catalog
from madapt.config import apply_overrides, deep_merge, load_config, preset_names, read_yaml, resolve, to_yaml
from madapt.errors import ConfigError, UnknownNameError

catalog.load_all()


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_overrides_are_typed_and_nested():
    data = apply_overrides(
        {"train": {"lr": 1.0}},
        ["train.lr=1e-5", "train.lr_per_task.mnist=5e-5", "methods=[zscl, lwf]", "data_root=/d"],
    )
    assert data == {
        "train": {"lr": 1e-5, "lr_per_task": {"mnist": 5e-5}},
        "methods": ["zscl", "lwf"],
        "data_root": "/d",
    }
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_deep_merge_keeps_base_keys():
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}


def test_every_preset_validates_and_round_trips():
    names = preset_names()
    assert "demo/default" in names
    for name in names:
        if name.startswith(("mtil/", "fewshot", "cil/")):
            cfg = load_config(name, ["data_root=/data"])
        else:
            cfg = load_config(name)
        again = load_config(name, ["data_root=/data"] if getattr(cfg, "data_root", None) else [])
        assert to_yaml(cfg) == to_yaml(again)


@pytest.mark.parametrize("name", ["fewshot_mtil/finetune_order1", "fewshot_mtil/condu_ft_order1"])
def test_few_shot_mtil_presets_run_condus_few_shot_script(name):
    # ConDU_Ascend/scripts/fewshot_MTIL_FT.sh with src/args.py defaults: the code's protocol.
    cfg = load_config(name, ["data_root=/data"])
    assert cfg.data.shots == 5
    assert (cfg.train.iterations, cfg.train.batch_size, cfg.train.warmup_steps) == (500, 64, 100)
    assert cfg.train.label_smoothing == 0.2 and cfg.train.weight_decay == 0.0
    assert cfg.train.lr_per_task == {"aircraft": 5e-5, "mnist": 5e-5} and cfg.train.lr == 1e-5


def test_base_chain_and_override_win(tmp_path):
    write(tmp_path, "base: demo/default\ntrain: {iterations: 7}\n", "child.yaml")
    cfg = load_config(str(tmp_path / "child.yaml"), ["seed=3"])
    assert cfg.train.iterations == 7 and cfg.seed == 3
    assert cfg.train.batch_size == load_config("demo/default").train.batch_size


def test_method_defaults_are_resolved_into_the_saved_config():
    cfg = load_config("demo/default", ["methods=[zscl]"])
    text = to_yaml(cfg)
    assert "average_every: 100" in text and "l2: 1.0" in text


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.iteratons.*did you mean 'iterations'"):
        load_config("demo/default", ["train.iteratons=5"])
    with pytest.raises(ConfigError, match=r"methods\.0\.temprature.*did you mean 'temperature'"):
        load_config("demo/default", ["methods=[{name: lwf, temprature: 3}]"])


def test_malformed_yaml_reports_line(tmp_path):
    path = write(tmp_path, "kind: continual\nseed: [1,\n")
    with pytest.raises(ConfigError, match="line 3"):
        read_yaml(path)


def test_unknown_names(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'demo/default'"):
        resolve("demo/defualt")
    with pytest.raises(UnknownNameError, match="zcsl"):
        load_config("demo/default", ["methods=[zcsl]"])
    with pytest.raises(UnknownNameError, match="recipe 'contnual'"):
        load_config("demo/default", ["kind=contnual"])


def test_type_and_range_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"train\.batch_size.*many"):
        load_config("demo/default", ["train.batch_size=many"])
    with pytest.raises(ConfigError, match=r"train\.iterations.*greater than 0"):
        load_config("demo/default", ["train.iterations=-1"])


def test_labels_tell_two_entries_of_one_continual_method_apart(tmp_path):
    cfg = load_config("demo/default", ["methods=[awof, {name: awof, label: awof_c0, weighting: c0}]"])
    assert [m.key for m in cfg.methods] == ["awof", "awof_c0"]
    assert [m.weighting for m in cfg.methods] == ["adaptive", "c0"]
    saved = write(tmp_path, to_yaml(cfg), "saved.yaml")  # what a run folder keeps and --resume re-reads
    assert [m.key for m in load_config(str(saved)).methods] == ["awof", "awof_c0"]
    with pytest.raises(ConfigError, match=r"methods\.1.*'awof' appears twice.*label"):
        load_config("demo/default", ["methods=[awof, {name: awof, weighting: c0}]"])
