"""Recipe ``kind: visual_prompt`` end to end on tiny configs: variants, resume, mapping refresh, errors."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from madapt import catalog, registry
from madapt.backbones.classifier import load_classifier
from madapt.config import load_config
from madapt.errors import ConfigError, DataError, UnknownNameError
from madapt.prompting import visual, visual_train
from madapt.recipes import run_experiment
from madapt.runs import Checkpointer, save_tensors

catalog.load_all()
VARIANTS = [
    "hardcoded",
    "random",
    "flm",
    "ilm",
    "otlm",
    "otlm_train_pass",
    "ilm_train_pass",
    "linear_probe",
    "full_finetune",
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_tensors(path, load_classifier("madapt-tiny-resnet50").model.state_dict())
    return path


def tiny(weights: Path, *extra: str) -> list[str]:
    return [
        "backbone=madapt-tiny-resnet50",
        f"weights={weights}",
        "data.name=digits",
        "data.train_per_class=3",
        "data.val_per_class=2",
        "data.test_per_class=2",
        "train.epochs=2",
        "train.batch_size=8",
        "eval_batch_size=64",
        *extra,
    ]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_every_variant_gets_a_result_and_the_report_is_written(weights, tmp_path) -> None:
    results = run_experiment("vp/micro_otlm", tiny(weights), tmp_path / "run", False, quiet())
    assert set(results["variants"]) == set(VARIANTS)
    for tag, r in results["variants"].items():
        assert 0.0 <= r["accuracy"] <= 100.0 and len(r["history"]) == 2, tag
    v = results["variants"]
    assert v["hardcoded"]["mapping"] == list(range(10))
    for tag in ("random", "flm", "ilm", "otlm", "otlm_train_pass"):
        assert len(set(v[tag]["mapping"])) == 10 and max(v[tag]["mapping"]) < 1000
    assert v["otlm"]["mapping_source"] == "extra_pass"
    assert v["otlm_train_pass"]["mapping_source"] == "train_pass"
    assert v["flm"]["mapping_source"] is None
    prompt_params = 3 * (32 * 32 - 24 * 24)  # Bahng's four 4 px pads on the 32 px input
    assert v["otlm"]["trainable_params"] == prompt_params
    assert v["linear_probe"]["trainable_params"] == 10 * 256 + 10  # new head over 4 x 64 bottleneck features
    assert v["linear_probe"]["trainable_params"] < v["full_finetune"]["trainable_params"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "OTLM" in report and "Figure 6.4" in report and "zero" in report
    for png in ("mapping.png", "loss.png", "val_accuracy.png"):
        assert (tmp_path / "run" / png).is_file(), png
    assert (tmp_path / "run" / "initial_logits.safetensors").is_file()  # Figure 6.5's data (flm + otlm)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(weights, tmp_path, monkeypatch) -> None:
    args = tiny(
        weights,
        "train.epochs=3",
        "variants=[otlm, {name: ilm, mapping_source: train_pass}, linear_probe, random]",
    )
    clean = run_experiment("vp/micro_otlm", args, tmp_path / "clean", False, quiet())
    calls = {"n": 0}
    save = Checkpointer.save

    def crash_after_four(self, unit, state):
        calls["n"] += 1
        if calls["n"] > 4:  # otlm finished (3 epochs), ilm crashes after its first epoch
            raise KeyboardInterrupt
        return save(self, unit, state)

    monkeypatch.setattr(Checkpointer, "save", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("vp/micro_otlm", args, tmp_path / "crash", False, quiet())
    monkeypatch.setattr(Checkpointer, "save", save)
    pointer = tmp_path / "crash" / "ilm" / "checkpoints" / "latest.json"
    assert json.loads(pointer.read_text())["unit"] == {"epoch": 1}
    resumed = run_experiment("vp/micro_otlm", args, tmp_path / "crash", True, quiet())
    for tag in ("otlm", "ilm", "linear_probe", "random"):
        a, b = clean["variants"][tag], resumed["variants"][tag]
        assert a["accuracy"] == b["accuracy"] and a.get("mapping") == b.get("mapping"), tag
        assert a["final_accuracy"] == b["final_accuracy"] and a["best_epoch"] == b["best_epoch"], tag
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]], tag
        assert [h["val_accuracy"] for h in a["history"]] == [h["val_accuracy"] for h in b["history"]], tag


def test_train_pass_skips_the_extra_passes(weights, monkeypatch) -> None:
    cfg = load_config("vp/micro_otlm", tiny(weights, "train.epochs=3"))
    prepared = visual.prepare(cfg)
    passes = {"n": 0}
    real = visual_train.mapping_pass

    def counting(*args, **kwargs):
        passes["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(visual_train, "mapping_pass", counting)
    counts = {}
    for variant in cfg.variants:
        if variant.tag in ("flm", "ilm", "otlm", "otlm_train_pass", "ilm_train_pass"):
            passes["n"] = 0
            entry = visual.fit_variant(cfg, prepared, variant)
            counts[variant.tag] = passes["n"]
            assert len(set(entry["mapping"])) == 10
    # ILM-VP: a pass before each of the 3 epochs; train_pass: only the initial one; FLM: once
    assert counts == {"flm": 1, "ilm": 3, "otlm": 3, "otlm_train_pass": 1, "ilm_train_pass": 1}


def test_vpt_deep_variant_trains_only_prompt_tokens(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "vit.safetensors"
    vit = load_classifier("madapt-tiny-vit").model
    save_tensors(path, vit.state_dict())
    args = [
        "backbone=madapt-tiny-vit",
        f"weights={path}",
        "data.name=digits",
        "data.train_per_class=2",
        "data.test_per_class=1",
        "train.epochs=1",
        "prompt.kind=vpt_deep",
        "prompt.tokens=3",
        "variants=[otlm]",
    ]
    cfg = load_config("vp/micro_otlm", args)
    entry = visual.fit_variant(cfg, visual.prepare(cfg), cfg.variants[0])
    assert entry["trainable_params"] == len(vit.blocks) * 3 * vit.embed_dim
    assert len(set(entry["mapping"])) == 10
    with pytest.raises(ConfigError, match="VisionTransformer"):
        visual.prepare(
            load_config(
                "vp/micro_otlm", ["prompt.kind=vpt_deep", "data.train_per_class=1", "data.test_per_class=1"]
            )
        )


def test_vpt_deep_on_swin_trains_the_prompt_tokens_of_every_block(tmp_path) -> None:
    """§6.5.3 / Table 6.8 on the tiny Swin: tokens per window and block, the source head kept."""
    torch.manual_seed(0)
    path = tmp_path / "swin.safetensors"
    swin = load_classifier("madapt-tiny-swin").model
    save_tensors(path, swin.state_dict())
    cfg = load_config(
        "vp/micro_otlm",
        [
            "backbone=madapt-tiny-swin",
            f"weights={path}",
            "data.name=digits",
            "data.train_per_class=2",
            "data.test_per_class=1",
            "train.epochs=1",
            "prompt.kind=vpt_deep",
            "prompt.tokens=3",
            "variants=[otlm]",
        ],
    )
    entry = visual.fit_variant(cfg, visual.prepare(cfg), cfg.variants[0])
    widths = [info["num_chs"] for info in swin.feature_info]
    assert entry["trainable_params"] == sum(len(s.blocks) * 3 * w for s, w in zip(swin.layers, widths))
    assert len(set(entry["mapping"])) == 10 and max(entry["mapping"]) < swin.num_classes


def test_unknown_mapper_is_an_unknown_name_error(weights) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'otlm'"):
        load_config("vp/micro_otlm", tiny(weights, "variants=[otlmm]"))


def test_bad_mapper_option_and_duplicate_labels_are_config_errors(weights) -> None:
    with pytest.raises(ConfigError, match="variants.0.options"):
        load_config("vp/micro_otlm", tiny(weights, "variants=[{name: flm, options: {solver: lsa}}]"))
    with pytest.raises(ConfigError, match="used twice"):
        load_config("vp/micro_otlm", tiny(weights, "variants=[otlm, otlm]"))


def test_more_target_than_source_classes_is_a_config_error(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    path = tmp_path / "five.safetensors"
    save_tensors(path, load_classifier("madapt-tiny-resnet50", num_classes=5).model.state_dict())
    monkeypatch.setitem(
        registry._ENTRIES["backbone"],
        "tiny-five",
        functools.partial(load_classifier, "madapt-tiny-resnet50", num_classes=5),
    )
    cfg = load_config(
        "vp/micro_otlm",
        [
            "backbone=tiny-five",
            f"weights={path}",
            "data.name=digits",
            "data.train_per_class=1",
            "data.test_per_class=1",
        ],
    )
    with pytest.raises(ConfigError, match="n_target \\* sources_per_class <= n_source"):
        visual.prepare(cfg)


def test_real_data_needs_data_root_and_its_layout(weights, tmp_path) -> None:
    with pytest.raises(ConfigError, match="data.data_root"):
        visual.prepare(load_config("vp/micro_otlm", tiny(weights, "data.name=cub200")))
    with pytest.raises(ConfigError, match="weights"):
        visual.prepare(load_config("vp/micro_otlm", ["backbone=resnet50"]))
    cfg = load_config("vp/micro_otlm", tiny(weights, "data.name=cub200", f"data.data_root={tmp_path}"))
    with pytest.raises(DataError, match="cub200"):
        visual.prepare(cfg)
    assert not (tmp_path / "cub200").exists()


def test_shots_fraction_subsamples_the_training_set(weights) -> None:
    cfg = load_config(
        "vp/micro_otlm",
        tiny(
            weights,
            "data.train_per_class=20",
            "data.shots_fraction=0.1",
            "train.epochs=1",
            "variants=[hardcoded, {name: flm, shots_fraction: 0.05}]",
        ),
    )
    prepared = visual.prepare(cfg)
    entries = [visual.fit_variant(cfg, prepared, v) for v in cfg.variants]
    assert [e["train_images"] for e in entries] == [20, 10]  # 2 and 1 of 20 per class
    assert [e["shots_fraction"] for e in entries] == [0.1, 0.05]


def test_every_vp_preset_validates_once_weights_and_data_root_are_given() -> None:
    """Each preset family carries its source's protocol (seed 000 §6.5; the anchors file)."""
    from madapt.config import preset_names

    vp_presets = [n for n in preset_names() if n.startswith("vp/")]
    assert "vp/micro_otlm" in vp_presets and "vp/otlm_vitb22k_cub200" in vp_presets
    assert load_config("vp/micro_otlm").variants[0].name == "hardcoded"
    table_6_8 = ["cub200", "flowers102", "nabirds", "stanford_cars", "stanford_dogs"]
    assert [n for n in vp_presets if n.startswith("vp/vpt_otlm_swinb22k_")] == [
        f"vp/vpt_otlm_swinb22k_{d}" for d in table_6_8
    ]
    for name in vp_presets:
        if name.startswith("vp/micro_"):
            assert load_config(name).backbone == "micro-source"  # offline presets need nothing
            continue
        if load_config(name).kind == "vp_trainable_params":  # Table 6.11 counts, it does not train
            continue
        with pytest.raises(ConfigError, match="weights|data_root"):
            visual.check_required(load_config(name))
        given = ["weights=/models/w.safetensors", "data.data_root=/data", "sources.in1k.weights=/models/w1k"]
        cfg = load_config(name, given if "scalability" in name else given[:2])
        t = cfg.train
        assert cfg.kind == "visual_prompt"
        if name.startswith("vp/ilmvp_"):  # ILM-VP: expansive prompt, Adam 0.01, 200 epochs, MultiStepLR
            assert cfg.prompt.kind == "expansive" and (t.optimizer, t.lr, t.epochs) == ("adam", 0.01, 200)
            assert (t.schedule, t.milestones, t.gamma, cfg.precision) == (
                "multistep",
                [0.5, 0.72],
                0.1,
                "fp16",
            )
            assert t.batch_size == (64 if name.endswith("_dtd") else 128) and cfg.seed == 7
            continue
        assert (
            t.optimizer == "sgd" and t.momentum == 0.9 and t.batch_size == 128 and t.selection == "best_val"
        )
        if name.startswith(
            "vp/vpt_otlm_"
        ):  # §6.5.3: SGD lr 0.1, weight decay 1e-4, 100 epochs; VPT's warm-up
            assert cfg.prompt.kind == "vpt_deep" and t.lr == 0.1 and t.weight_decay == 1e-4
            assert (
                t.epochs == 100
                and t.warmup_epochs == 10
                and [v.name for v in cfg.variants] == ["flm", "ilm", "otlm"]
            )
        else:  # the thesis' VP framework: Bahng et al.'s PadPrompter and warm-up + cosine
            assert (cfg.prompt.kind, cfg.prompt.pad, t.warmup_steps, t.weight_decay) == ("pad", 30, 1000, 0.0)
        if "vitb22k" in name and not name.startswith("vp/vpt"):
            assert t.lr == 1e4 and t.epochs == 100  # seed 000 §6.5.2.1
        if name.startswith(("vp/otlm_resnet50", "vp/compare_resnet50")):
            assert t.lr == 1e2
        if name.startswith(("vp/otlm_vitl1k", "vp/otlm_convnextb22k")):
            assert t.epochs == 50  # §6.5.2.2
        if name.startswith("vp/vpt_otlm_swinb22k_"):  # Swin-B IN-22K with its own 21,841-way head
            assert cfg.backbone == "swin_base_patch4_window7_224.ms_in22k"
            assert cfg.backbone in registry.names("backbone")


def test_every_preset_runs_its_backbones_at_their_timm_evaluation_size() -> None:
    """ResNet-50 tv2_in1k trains at 176 px in timm but is evaluated at 224: prompts are sized to 224."""
    from madapt.backbones.classifier import eval_data_config
    from madapt.config import preset_names

    for name in (n for n in preset_names() if n.startswith("vp/") and not n.startswith("vp/micro_")):
        cfg = load_config(name)
        if cfg.kind == "vp_trainable_params":  # Table 6.11 counts parameters, it runs no images
            continue
        for backbone in (cfg.backbone, *(s.backbone for s in cfg.sources.values())):
            assert eval_data_config(backbone)["input_size"] == (3, 224, 224), (name, backbone)
    assert eval_data_config("resnet50.tv2_in1k")["input_size"] == (3, 224, 224)
    assert load_classifier("madapt-tiny-resnet50").input_size == (3, 32, 32)  # tiny: its own size
