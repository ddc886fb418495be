"""The VP protocol (seed 000 §6.5, anchors §2): schedules per source, epoch selection on validation
only, the run seed, autocast on a CPU, several sources per target class through the recipe."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import test_vp_recipe
import torch

from madapt import catalog
from madapt.config import load_config
from madapt.prompting import visual, visual_train

catalog.load_all()
weights = test_vp_recipe.weights  # the tiny ResNet weights fixture


def tiny(weights: Path, *extra: str) -> list[str]:
    return test_vp_recipe.tiny(weights, "train.epochs=3", *extra)


def lrs(cfg, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    sched = visual.make_scheduler(cfg, opt, steps_per_epoch)
    out = []
    for _ in range(cfg.train.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_ilmvp_multistep_schedule_drops_tenfold_after_half_and_72_percent_of_the_epochs() -> None:
    cfg = load_config("vp/ilmvp_resnet50_cifar10", ["weights=/w", "data.data_root=/d"])
    values = lrs(cfg, steps_per_epoch=2)
    by_epoch = values[::2]
    assert values[1::2] == by_epoch  # constant within an epoch, as MultiStepLR stepped per epoch
    # torch's MultiStepLR(milestones=[int(0.5 * 200), int(0.72 * 200)], gamma=0.1), epoch by epoch
    assert by_epoch[:100] == [0.01] * 100
    assert all(math.isclose(v, 0.001) for v in by_epoch[100:144])
    assert all(math.isclose(v, 0.0001) for v in by_epoch[144:])
    assert isinstance(visual.make_optimizer(cfg, cfg.variants[0], _learner()), torch.optim.Adam)


def _learner() -> visual_train.Learner:
    net = torch.nn.Linear(2, 2).requires_grad_(False)
    adapter = visual.PlainInput((1, 1), (0, 0, 0), (1, 1, 1))
    adapter.p = torch.nn.Parameter(torch.zeros(1))
    return visual_train.Learner(adapter, net, finetune=False)


def test_bahng_schedule_warms_up_1000_steps_then_decays_by_cosine() -> None:
    cfg = load_config("vp/otlm_vitb22k_cifar10", ["weights=/w", "data.data_root=/d", "train.epochs=4"])
    values = lrs(cfg, steps_per_epoch=500)  # 2000 steps: 1000 of warm-up, 1000 of cosine
    assert values[0] == pytest.approx(1e4 / 1000) and values[999] == pytest.approx(1e4)
    assert values[1500] == pytest.approx(1e4 * 0.5 * (1 + math.cos(math.pi * 500 / 1000)))
    assert values[-1] < 1.0


def test_the_reported_epoch_is_chosen_on_validation_and_test_is_read_only_after_training(
    weights, monkeypatch
) -> None:
    cfg = load_config("vp/micro_otlm", tiny(weights, "variants=[otlm]"))
    prepared = visual.prepare(cfg)
    val, test = prepared.data.val, prepared.data.test
    scores = iter([10.0, 50.0, 20.0])  # validation accuracies of epochs 1, 2, 3: epoch 2 is best
    seen: list[tuple[str, torch.Tensor]] = []
    real = visual_train.evaluate

    def fake(learner, mapper, dataset, batch_size, rt):
        pads = torch.cat([p.detach().flatten() for p in learner.adapter.parameters()]).clone()
        if dataset is val:
            seen.append(("val", pads))
            return next(scores)
        assert dataset is test
        seen.append(("test", pads))
        return real(learner, mapper, dataset, batch_size, rt)

    monkeypatch.setattr(visual_train, "evaluate", fake)
    entry = visual.fit_variant(cfg, prepared, cfg.variants[0])
    assert [kind for kind, _ in seen] == ["val", "val", "val", "test", "test"]
    assert (
        entry["best_epoch"] == 2 and entry["best_val_accuracy"] == 50.0 and entry["selection"] == "best_val"
    )
    assert torch.equal(seen[3][1], seen[2][1])  # final test: the last epoch's prompt
    assert torch.equal(seen[4][1], seen[1][1])  # reported test: the best-validation epoch's prompt
    assert [h["val_accuracy"] for h in entry["history"]] == [10.0, 50.0, 20.0]


def test_without_a_validation_split_the_last_epoch_is_reported(weights) -> None:
    cfg = load_config("vp/micro_otlm", tiny(weights, "data.val_per_class=0", "variants=[flm]"))
    entry = visual.fit_variant(cfg, visual.prepare(cfg), cfg.variants[0])
    assert entry["selection"] == "final" and entry["accuracy"] == entry["final_accuracy"]
    assert "val_accuracy" not in entry["history"][0]


def test_random_mapping_is_drawn_from_the_run_seed(weights) -> None:
    maps = {}
    for seed in (0, 1):
        cfg = load_config(
            "vp/micro_otlm", tiny(weights, f"seed={seed}", "train.epochs=1", "variants=[random]")
        )
        maps[seed] = visual.fit_variant(cfg, visual.prepare(cfg), cfg.variants[0])["mapping"]
    assert maps[0] != maps[1]
    cfg = load_config(
        "vp/micro_otlm",
        tiny(weights, "seed=1", "train.epochs=1", "variants=[{name: random, options: {seed: 0}}]"),
    )
    assert visual.fit_variant(cfg, visual.prepare(cfg), cfg.variants[0])["mapping"] == maps[0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_recipe_runs_under_autocast_on_a_cpu(weights, monkeypatch, precision) -> None:
    """The CUDA path's autocast (and fp16's GradScaler) on the CPU: the network computes in the
    low precision, the loss and mapping stay float32, training moves the prompt."""
    dtypes = set()
    forward = visual_train.Learner.forward

    def spy(self, x):
        out = forward(self, x)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(visual_train.Learner, "forward", spy)
    cfg = load_config(
        "vp/micro_otlm", tiny(weights, f"precision={precision}", "device=cpu", "variants=[otlm]")
    )
    entry = visual.fit_variant(cfg, visual.prepare(cfg), cfg.variants[0])
    assert dtypes == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert all(math.isfinite(h["loss"]) for h in entry["history"]) and len(set(entry["mapping"])) == 10
    monkeypatch.setattr(visual_train.Learner, "forward", forward)
    fp32 = load_config("vp/micro_otlm", tiny(weights, "variants=[otlm]"))
    plain = visual.fit_variant(fp32, visual.prepare(fp32), fp32.variants[0])
    assert plain["history"][0]["loss"] != entry["history"][0]["loss"]  # autocast did change the arithmetic


def test_fp32_on_a_cpu_enters_no_autocast_context(weights, monkeypatch) -> None:
    """CPU results unchanged: at fp32 the loop never enters torch.autocast."""
    entered = []
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: entered.append(a) or pytest.fail("autocast"))
    cfg = load_config("vp/micro_otlm", tiny(weights, "train.epochs=1", "variants=[otlm]"))
    visual.fit_variant(cfg, visual.prepare(cfg), cfg.variants[0])
    assert not entered


def test_several_sources_per_class_through_the_recipe(weights) -> None:
    cfg = load_config(
        "vp/micro_otlm",
        tiny(
            weights,
            "train.epochs=1",
            "variants=[{name: otlm, options: "
            "{sources_per_class: 3}}, {name: ilm, options: {sources_per_class: 2}}]",
        ),
    )
    prepared = visual.prepare(cfg)
    otlm, ilm = (visual.fit_variant(cfg, prepared, v) for v in cfg.variants)
    assert len(otlm["mapping"]) == 10 and all(len(row) == 3 for row in otlm["mapping"])
    assert len({s for row in otlm["mapping"] for s in row}) == 30
    assert all(len(row) == 2 for row in ilm["mapping"]) and " + " in ilm["mapped_names"][0]
    with pytest.raises(Exception, match="sources_per_class"):
        visual.prepare(
            load_config(
                "vp/micro_otlm", tiny(weights, "variants=[{name: flm, options: {sources_per_class: 200}}]")
            )
        )
