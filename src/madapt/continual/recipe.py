"""Recipe ``kind: continual``: a CLIP task sequence (MTIL, few-shot MTIL, CIL, the micro world) for
a list of methods, each in its own sub-folder, ending with Transfer/Avg/Last and accuracy heatmaps.

``prepare`` loads the backbone and every dataset (every user error surfaces before anything is
written); ``run`` scores the pretrained model once (the zero-shot accuracies every method reuses
for the datasets it predicts with the untouched model), then runs each method over the sequence
(``workers`` > 1: side by side in spawned processes); the report lives in `continual/report.py`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from madapt import catalog
from madapt.config import Recipe, register_recipe
from madapt.continual.config import RANDOM_INIT, ContinualConfig
from madapt.continual.context import Context, TrainSettings
from madapt.continual.datasets import Reference, build_tasks
from madapt.continual.engine import evaluate, lrs_for, run_sequence
from madapt.continual.methods.zeroshot import ZeroShot
from madapt.continual.metrics import cil_metrics, mtil_metrics
from madapt.continual.report import report
from madapt.continual.tasks import Task
from madapt.errors import ConfigError, DataError
from madapt.registry import get
from madapt.runs import RunFolder, atomic_write_json, seed_everything
from madapt.training import join_processes, loader_workers


@dataclass
class Prepared:
    backbone_state: dict[str, torch.Tensor]
    tasks: list[Task]
    reference: Reference | None


def load_backbone(cfg: ContinualConfig):
    """The CLIP backbone of the config; ``pretrained: random`` is an explicit random init, and a
    missing ``pretrained`` is an error (only the micro CLIP has bundled weights)."""
    if cfg.backbone != "micro-clip" and cfg.pretrained is None:
        raise ConfigError(
            "pretrained",
            f"is missing for {cfg.backbone}",
            "a local weights file (pretrained=/weights/ViT-B-16.safetensors), a cached open_clip "
            f"tag, or pretrained={RANDOM_INIT} to train a randomly initialised model",
        )
    seed_everything(cfg.seed)
    weights = None if cfg.pretrained == RANDOM_INIT else cfg.pretrained
    return get("clip", cfg.backbone)(weights)


def prepare(cfg: ContinualConfig) -> Prepared:
    """Load the backbone and every dataset (all user-input errors surface here, before any write)."""
    world = join_processes().world
    if cfg.train.batch_size % (world * cfg.train.accumulate):
        raise ConfigError(
            "train.batch_size",
            f"{cfg.train.batch_size} does not split over {world} processes "
            f"x {cfg.train.accumulate} micro-batches",
            f"a multiple of {world * cfg.train.accumulate} (equal slices of every batch)",
        )
    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision", "fp16 without a CUDA device", "fp32 or bf16 on a CPU")
    backbone = load_backbone(cfg)
    tasks, reference = build_tasks(cfg, backbone)
    for m in cfg.methods:
        if get("method", m.name).needs_reference and reference is None:
            raise ConfigError(
                "data.reference_images / data.reference_captions",
                f"are missing ({m.name} needs them)",
                "a reference image folder and a caption file (ZSCL: ImageNet/train and Conceptual Captions)",
            )
    for task in tasks:
        if len(task.train) == 0 or len(task.test) == 0:
            raise DataError(f"dataset '{task.name}'", "has an empty split", "images in train and test")
    state = {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}
    return Prepared(state, tasks, reference)


def settings_of(cfg: ContinualConfig, tasks: list[Task]) -> TrainSettings:
    """The engine's settings; ``train.epochs`` turns into per-task step counts (ZSCL's CIL loop)."""
    iterations = [
        cfg.train.iterations
        if cfg.train.epochs is None
        else max(1, round(cfg.train.epochs * math.ceil(len(t.train) / cfg.train.batch_size)))
        for t in tasks
    ]
    return TrainSettings(
        iterations=iterations,
        batch_size=cfg.train.batch_size,
        lrs=lrs_for([t.name for t in tasks], cfg.train.lr, cfg.train.lr_per_task),
        warmup_steps=cfg.train.warmup_steps,
        weight_decay=cfg.train.weight_decay,
        label_smoothing=cfg.train.label_smoothing,
        logit_scale=cfg.train.logit_scale,
        eval_batch_size=cfg.eval.batch_size,
        checkpoint_every=cfg.train.checkpoint_every,
        precision=cfg.train.precision,
        accumulate=cfg.train.accumulate,
        num_workers=loader_workers(cfg.train.num_workers),
        task_agnostic=cfg.eval.task_agnostic,
        class_incremental=cfg.data.cil is not None,
        seed=cfg.seed,
    )


def _context(cfg: ContinualConfig, prepared: Prepared) -> Context:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    procs = join_processes()
    backbone = load_backbone(cfg)
    backbone.model.load_state_dict(prepared.backbone_state)
    backbone.model.to(procs.device)
    return Context(
        backbone=backbone,
        tasks=prepared.tasks,
        settings=settings_of(cfg, prepared.tasks),
        device=procs.device,
        reference=prepared.reference,
        processes=procs,
    )


def zero_shot_accuracies(cfg: ContinualConfig, prepared: Prepared, folder: RunFolder) -> list[float] | None:
    """The pretrained model's accuracy on every dataset under the run's protocol, computed once per
    run (kept in ``zero_shot.json`` for resumed runs). None for CIL, whose label space grows."""
    if cfg.data.cil:
        return None
    path = folder.path / "zero_shot.json"
    join_processes().barrier()  # every process decides on the same file
    if path.is_file():
        return [float(a) for a in json.loads(path.read_text(encoding="utf-8"))]
    ctx = _context(cfg, prepared)
    acc = [evaluate(ZeroShot(ZeroShot.Config()), ctx, j) for j in range(len(ctx.tasks))]
    if ctx.processes.is_main:
        atomic_write_json(path, acc)
    return acc


def run_method(
    cfg: ContinualConfig,
    prepared: Prepared,
    index: int,
    folder: Path,
    zero_shot: list[float] | None,
    progress: Any = None,
) -> dict[str, Any]:
    """One method over the whole sequence in ``folder`` (resumable); returns its results entry."""
    mcfg = cfg.methods[index]
    sub = RunFolder(folder)
    procs = join_processes()
    procs.barrier()  # all processes see the same `finished` before the main one may write results
    if sub.finished:
        return sub.read_results()
    ctx = _context(cfg, prepared)
    ctx.artifacts = sub.path / "artifacts"
    seed_everything(cfg.seed)  # what setup() draws (new modules' init) is fixed by the seed
    method = get("method", mcfg.name)(mcfg)
    acc = run_sequence(
        method, ctx, sub.checkpoints, progress, zero_shot=None if zero_shot is None else zero_shot.__getitem__
    )
    if cfg.data.cil:
        sizes = [len(t.test) for t in prepared.tasks]
        steps = [
            sum(a * n for a, n in zip(row[: i + 1], sizes)) / sum(sizes[: i + 1]) for i, row in enumerate(acc)
        ]
        entry = {"accuracy": acc, "step_accuracy": steps, **cil_metrics(steps)}
    else:
        entry = {"accuracy": acc, **mtil_metrics(acc)}
    entry["summary"] = method.summary(ctx)
    if procs.is_main:
        sub.path.mkdir(parents=True, exist_ok=True)
        sub.write_results(entry)
    return entry


def _worker(
    cfg: ContinualConfig, prepared: Prepared, index: int, folder: Path, zero_shot: list[float] | None
) -> dict:
    catalog.load_all()  # a spawned process starts with empty registries
    return run_method(cfg, prepared, index, folder, zero_shot)


def run(cfg: ContinualConfig, prepared: Prepared, folder: RunFolder, console: Console) -> dict[str, Any]:
    """Every method of ``cfg.methods`` in its own sub-folder; ``workers`` > 1 runs them side by side
    in separate processes (one torch thread each is the fastest use of small CPUs)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    labels = [m.key for m in cfg.methods]
    entries: dict[str, dict[str, Any]] = {}
    if cfg.pretrained == RANDOM_INIT and join_processes().is_main:
        folder.log(f"{cfg.backbone}: randomly initialised (pretrained: {RANDOM_INIT}, seed {cfg.seed})")
        console.print(f"[yellow]{cfg.backbone} is randomly initialised (pretrained: {RANDOM_INIT})[/yellow]")
    with console.status("zero-shot accuracy of the pretrained model"):
        zero_shot = zero_shot_accuracies(cfg, prepared, folder)

    def done(label: str, entry: dict[str, Any]) -> None:
        entries[label] = entry
        folder.log(
            f"{label}: " + ", ".join(f"{k} {entry[k]:.1f}" for k in ("transfer", "avg", "last") if k in entry)
        )
        console.print(f"[green]done[/green] {label}")

    if cfg.workers > 1 and join_processes().world == 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(_worker, cfg, prepared, i, folder.path / label, zero_shot): label
                for i, label in enumerate(labels)
            }
            with console.status(f"running {len(labels)} methods in {cfg.workers} processes"):
                for future in as_completed(futures):
                    done(futures[future], future.result())
    else:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            for i, label in enumerate(labels):
                job = bar.add_task(label, total=cfg.train.iterations)

                def progress(task_name: str, step: int, total: int, job=job, label=label) -> None:
                    bar.update(job, completed=step, total=total, description=f"{label} · {task_name}")

                done(label, run_method(cfg, prepared, i, folder.path / label, zero_shot, progress))
                bar.remove_task(job)
    return {
        "order": [t.name for t in prepared.tasks],
        "protocol": "cil" if cfg.data.cil else "mtil",
        "zero_shot": zero_shot,
        "methods": {label: entries[label] for label in labels},
    }


register_recipe(Recipe("continual", ContinualConfig, prepare, run, report, multiprocess=True))
