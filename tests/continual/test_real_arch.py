"""Real-architecture smoke test (issue 3, "Tests and measurements"): ViT-B/16 (random init) runs one
training step and one evaluation pass of the MTIL recipe through the same `prepare` -> `run` path
as `madapt run mtil/zscl_order1`, on EuroSAT and MNIST written in torchvision's on-disk formats
(the datasets with the fewest class prompts, 30 + 10, since each prompt costs a ViT-B text pass).
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from madapt.catalog import load_all
from madapt.config import deep_merge, load_raw, validate
from madapt.continual import recipe
from madapt.continual.tasks import Task
from madapt.runs import RunFolder

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures.py"


def fixture_writers():
    """tests/data/fixtures.py, loaded by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("madapt_test_fixtures", FIXTURES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vit_b16_trains_one_step_and_evaluates_on_real_format_data(tmp_path):
    load_all()  # registers methods, datasets and backbones, as the CLI does
    fx = fixture_writers()
    root = tmp_path / "data"
    eurosat = fx.write_eurosat(root)
    mnist = fx.write_mnist(root, train=4, test=4)
    (tmp_path / "ref" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "ref" / "a" / f"{i}.jpg").write_bytes(fx.jpeg(i))
    (tmp_path / "captions.txt").write_text("a dog on a sofa\na red car\nthree apples\n")

    base, _ = load_raw("mtil/zscl_order1")
    cfg = validate(
        deep_merge(
            base,
            {
                "backbone": "ViT-B-16",
                "pretrained": "random",
                "seed": 0,
                "data_root": str(root),
                "data": {
                    "order": ["eurosat", "mnist"],
                    "reference_images": str(tmp_path / "ref"),
                    "reference_captions": str(tmp_path / "captions.txt"),
                },
                "train": {
                    "iterations": 1,
                    "batch_size": 2,
                    "warmup_steps": 0,
                    "num_workers": 0,
                    "checkpoint_every": 1,
                },
                "eval": {"batch_size": 64},
                # ZSCL covers the whole path (CE + reference data + teacher). One method only: each ViT-B copy
                # (model, theta_0, AdamW moments, teacher) costs 0.6 GB. With one step the weight ensemble
                # would average only step 0, i.e. undo the step, so it is off here.
                "methods": [{"name": "zscl", "reference_batch_size": 2, "weight_ensemble": False}],
            },
        ),
        "test",
    )

    prepared = recipe.prepare(cfg)
    tasks: list[Task] = prepared.tasks
    assert [t.name for t in tasks] == ["eurosat", "mnist"]
    assert [t.n_classes for t in tasks] == [10, 10]
    assert len(tasks[0].train) + len(tasks[0].test) == eurosat["n"]  # seed-42 80/20 split (ZSCL)
    assert len(tasks[1].train) == len(mnist["labels"]["train"])
    image, label = tasks[1].train[0]
    assert tuple(image.shape) == (3, 224, 224) and label == mnist["labels"]["train"][0]
    assert len(prepared.reference.captions) == 3

    folder = RunFolder(tmp_path / "run")
    folder.start("kind: continual\n")
    results = recipe.run(cfg, prepared, folder, Console(file=io.StringIO()))

    acc = np.asarray(results["methods"]["zscl"]["accuracy"])
    assert acc.shape == (2, 2)
    assert ((acc >= 0) & (acc <= 100)).all()
    final = RunFolder(folder.path / "zscl").checkpoints.load()
    assert final.unit == {"task": 2, "step": 0, "phase": "train"}
    changed = set(final.state["model"])  # the checkpoint stores what differs from theta_0
    params = set(prepared.backbone_state) - {"logit_scale"}
    assert "logit_scale" not in changed
    assert changed == params, sorted(params - changed)[:5]
