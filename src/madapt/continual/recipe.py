"""Recipe ``kind: continual``: a CLIP task sequence (MTIL, few-shot MTIL, MTIL-micro) for a list
of methods, each in its own sub-folder, ending with Transfer/Avg/Last and accuracy heatmaps.

Protocol (seed 000 §3.5.1, reference notes §2): per task ``iterations`` steps of ``batch_size``,
AdamW with warmup + cosine, label smoothing 0.2, logit scale 100, per-task learning rates; after
each task every dataset is evaluated with the template-ensemble head.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, SerializeAsAny, field_validator, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from madapt import catalog
from madapt.config import Recipe, Strict, register_recipe
from madapt.continual.engine import Context, TrainSettings, lrs_for, run_sequence
from madapt.continual.metrics import cil_metrics, mtil_metrics
from madapt.continual.tasks import ArrayDataset, StepView, Task
from madapt.errors import ConfigError, DataError, closest
from madapt.registry import get, names
from madapt.report import plots
from madapt.report.markdown import Section, write_report
from madapt.report.tables import print_table
from madapt.runs import RunFolder, seed_everything
from madapt.training import join_processes


class DataConfig(Strict):
    collection: Literal["micro", "mtil", "cil"] = Field("micro", description="generated micro world, real MTIL or CIL folders")
    order: list[str] = Field(default_factory=list, description="datasets in training order (seed 000 §3.5.1)")
    cil: str | None = Field(None, description="class-incremental setting: cifar100/10|20|50, tinyimagenet/5|10|20, "
                                             "micro/<steps> (seed 000 §3.5.1.1)")
    shots: int | None = Field(None, ge=1, description="few-shot MTIL: images per class (ConDU: 5)")
    train_size: int = Field(1200, ge=1, description="micro: generated training images per domain")
    test_size: int = Field(1000, ge=1, description="micro: generated test images per domain (>= 1,000)")
    reference_images: str | None = Field(None, description="real data: folder of reference images (ZSCL: ImageNet/train)")
    reference_captions: str | None = Field(None, description="real data: caption file (ZSCL: Conceptual Captions)")
    reference_size: int = Field(2000, ge=1, description="micro: generated reference image/caption pairs")


class TrainConfig(Strict):
    iterations: int = Field(1000, gt=0, description="steps per task (ZSCL: 1000; few-shot: 500)")
    batch_size: int = Field(64, gt=0, description="ZSCL: 64; few-shot: 32")
    lr: float = Field(1e-5, gt=0)
    lr_per_task: dict[str, float] = Field(default_factory=dict, description="ZSCL Order I: aircraft, mnist 5e-5")
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.2, ge=0, lt=1)
    logit_scale: float = Field(100.0, gt=0)
    bf16: bool = False
    checkpoint_every: int = Field(100, gt=0)
    num_workers: int = Field(0, ge=0)


class EvalConfig(Strict):
    batch_size: int = Field(256, gt=0)
    task_agnostic: bool = Field(False, description="no task id at test time: argmax over all classes")


class ContinualConfig(Strict):
    kind: Literal["continual"]
    seed: int = 42
    backbone: str = Field("micro-clip", description="a name from `madapt list backbones`")
    pretrained: str | None = Field(None, description="local weights path or cached open_clip tag")
    data_root: str | None = Field(None, description="folder with the real datasets (collection mtil)")
    data: DataConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    methods: list[SerializeAsAny[Strict]] = Field(..., min_length=1)
    workers: int = Field(1, ge=1, description="methods run side by side in this many processes "
                                               "(ignored under accelerate launch: there all processes train one method)")
    threads: int | None = Field(None, ge=1, description="torch threads per process (default: torch's)")

    @field_validator("methods", mode="before")
    @classmethod
    def _method_configs(cls, value: Any) -> list[Strict]:
        if not isinstance(value, list):
            raise ConfigError("methods", f"found {type(value).__name__}", "a list of {name: ..., <options>}")
        out = []
        for i, item in enumerate(value):
            item = {"name": item} if isinstance(item, str) else item
            if isinstance(item, Strict):
                out.append(item)
                continue
            if not isinstance(item, dict) or "name" not in item:
                raise ConfigError(f"methods.{i}", f"found {item!r}", "a method name or {name: ..., <options>}")
            method = get("method", str(item["name"]))
            try:
                out.append(method.Config.model_validate(item))
            except Exception as err:  # pydantic.ValidationError -> one line naming the field
                first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
                loc = ".".join(str(p) for p in first["loc"])
                hint = closest(str(first["loc"][-1]), method.Config.model_fields) if first["loc"] else ""
                raise ConfigError(f"methods.{i}.{loc}", first["msg"] + hint,
                                  "options: " + ", ".join(method.Config.model_fields)) from None
        return out

    @model_validator(mode="after")
    def _known_datasets(self) -> "ContinualConfig":
        names_seen = [m.name for m in self.methods]
        for i, name in enumerate(names_seen):
            if name in names_seen[:i]:
                raise ConfigError(f"methods.{i}", f"'{name}' appears twice", "each method once (one sub-folder each)")
        if self.data.cil is not None:
            return self._check_cil()
        if not self.data.order:
            raise ConfigError("data.order", "is empty", "datasets in training order (or data.cil for CIL)")
        known = [n.split("/", 1)[1] for n in names("dataset") if n.startswith(f"{self.data.collection}/")]
        for i, name in enumerate(self.data.order):
            if name not in known:
                raise ConfigError(f"data.order.{i}", f"unknown {self.data.collection} dataset '{name}'"
                                  + closest(name, known), "one of: " + ", ".join(sorted(known)))
        if self.data.collection == "mtil" and not self.data_root:
            raise ConfigError("data_root", "is missing", "the folder holding the MTIL datasets (data_root=DIR)")
        return self


    def _check_cil(self) -> "ContinualConfig":
        from madapt.data.cil import CIL_SETTINGS

        valid = [*CIL_SETTINGS, "micro/<steps>"]
        setting = self.data.cil
        micro = setting.startswith("micro/") and setting.split("/", 1)[1].isdigit()
        if not micro and setting not in CIL_SETTINGS:
            raise ConfigError("data.cil", f"unknown setting '{setting}'" + closest(setting, CIL_SETTINGS),
                              "one of: " + ", ".join(valid))
        if micro != (self.data.collection == "micro") or (not micro and self.data.collection != "cil"):
            raise ConfigError("data.collection", f"'{self.data.collection}' does not fit data.cil '{setting}'",
                              "collection micro for micro/<steps>, cil for cifar100/* and tinyimagenet/*")
        if not micro and not self.data_root:
            raise ConfigError("data_root", "is missing", "the folder holding the CIL datasets (data_root=DIR)")
        return self


@dataclass
class Prepared:
    backbone_state: dict[str, torch.Tensor]
    tasks: list[Task]
    reference: Any


@dataclass
class Reference:
    """Reference data for distillation: image dataset (with ``batch`` for speed) and captions."""

    images: Any
    captions: list[str]
    vocabulary: list[str]


def _micro_tasks(cfg: ContinualConfig, backbone) -> tuple[list[Task], Reference]:
    from madapt.data import synthetic

    domains = synthetic.micro_domains()
    tasks, offset = [], 0
    for name in cfg.data.order:
        spec = domains[name]
        train = synthetic.make_split(name, "train", cfg.data.train_size, cfg.seed)
        test = synthetic.make_split(name, "test", cfg.data.test_size, cfg.seed)
        tasks.append(Task(name, list(spec.classnames), list(spec.templates),
                          ArrayDataset(*train, backbone.mean, backbone.std),
                          ArrayDataset(*test, backbone.mean, backbone.std), class_offset=offset))
        offset += spec.n_classes
    stream = synthetic.pretraining_batches(cfg.seed + 1, cfg.data.reference_size)
    images, captions = next(stream)
    import numpy as np

    reference = Reference(ArrayDataset(images, np.zeros(len(images), dtype=np.int64), backbone.mean, backbone.std),
                          sorted(set(captions)), synthetic.vocabulary_words())
    return tasks, reference


def _mtil_tasks(cfg: ContinualConfig, backbone) -> tuple[list[Task], Reference | None]:
    from madapt.data import mtil
    from madapt.data.fewshot import few_shot_subset
    from madapt.data.reference import ReferenceImages, read_captions

    tasks, offset = [], 0
    for name in cfg.data.order:
        spec = mtil.spec_of(f"mtil/{name}")
        train = spec.load(cfg.data_root, "train", backbone.preprocess_train)
        test = spec.load(cfg.data_root, "test", backbone.preprocess_val)
        if cfg.data.shots:
            train = few_shot_subset(train, cfg.data.shots, cfg.seed, name=spec.name)
        classnames = spec.classnames or mtil.class_names(spec.name, cfg.data_root)
        tasks.append(Task(name, classnames, spec.templates, train, test, class_offset=offset))
        offset += len(classnames)
    reference = None
    if cfg.data.reference_images and cfg.data.reference_captions:
        captions = read_captions(cfg.data.reference_captions)
        reference = Reference(ReferenceImages(cfg.data.reference_images, backbone.preprocess_val), captions,
                              sorted({w for c in captions for w in c.lower().split()}))
    return tasks, reference


def _cil_tasks(cfg: ContinualConfig, backbone) -> tuple[list[Task], Reference | None]:
    """Class-incremental steps: one `Task` per step, labels local to the step (seed 000 §3.5.1.1)."""
    setting = cfg.data.cil
    if setting.startswith("micro/"):
        from madapt.data import synthetic

        spec = synthetic.micro_domains()[synthetic.CIL_MICRO]
        steps = synthetic.cil_micro_steps(int(setting.split("/")[1]), seed=1993)
        train = ArrayDataset(*synthetic.make_split(spec.name, "train", cfg.data.train_size, cfg.seed),
                             backbone.mean, backbone.std)
        test = ArrayDataset(*synthetic.make_split(spec.name, "test", cfg.data.test_size, cfg.seed),
                            backbone.mean, backbone.std)
        classnames, templates = list(spec.classnames), list(spec.templates)
        _, reference = _micro_tasks(cfg.model_copy(update={"data": cfg.data.model_copy(update={"order": []})}), backbone)
    else:
        from madapt.data import mtil
        from madapt.data.cil import cil_protocol

        name = "cil/" + setting.split("/")[0]
        spec = mtil.spec_of(name)
        steps = cil_protocol(setting)
        train = spec.load(cfg.data_root, "train", backbone.preprocess_train)
        test = spec.load(cfg.data_root, "test", backbone.preprocess_val)
        classnames = spec.classnames or mtil.class_names(name, cfg.data_root)
        templates, reference = spec.templates, None
    train_labels, test_labels = _labels(train), _labels(test)
    tasks, offset = [], 0
    for k, classes in enumerate(steps):
        tasks.append(Task(f"step{k + 1}", [classnames[c] for c in classes], templates,
                          _subset(train, train_labels, classes), _subset(test, test_labels, classes),
                          class_offset=offset))
        offset += len(classes)
    return tasks, reference


def _labels(dataset) -> list[int]:
    from madapt.data.fewshot import labels_of

    labels = getattr(dataset, "labels", None)
    return [int(y) for y in labels] if labels is not None else labels_of(dataset)


def _subset(dataset, labels: list[int], classes: list[int]):
    """A step's view; in-memory micro arrays stay arrays (vectorised batches)."""
    if isinstance(dataset, ArrayDataset):
        local = {c: i for i, c in enumerate(classes)}
        keep = [i for i, y in enumerate(labels) if y in local]
        view = ArrayDataset.__new__(ArrayDataset)
        view.images, view.mean, view.std = dataset.images[keep], dataset.mean, dataset.std
        view.labels = torch.as_tensor([local[labels[i]] for i in keep], dtype=torch.long)
        return view
    return StepView(dataset, labels, classes)


def prepare(cfg: ContinualConfig) -> Prepared:
    """Load the backbone and every dataset (all user-input errors surface here, before any write)."""
    world = join_processes().world
    if cfg.train.batch_size % world:
        raise ConfigError("train.batch_size", f"{cfg.train.batch_size} does not split over {world} processes",
                          f"a multiple of {world} (each process takes an equal slice of every batch)")
    seed_everything(cfg.seed)
    backbone = get("backbone", cfg.backbone)(cfg.pretrained)
    builder = _cil_tasks if cfg.data.cil else _micro_tasks if cfg.data.collection == "micro" else _mtil_tasks
    tasks, reference = builder(cfg, backbone)
    for m in cfg.methods:
        if m.name == "zscl" and reference is None:
            raise ConfigError("data.reference_images / data.reference_captions", "are missing",
                              "a reference image folder and caption file for ZSCL")
    for task in tasks:
        if len(task.train) == 0 or len(task.test) == 0:
            raise DataError(f"dataset '{task.name}'", "has an empty split", "images in train and test")
    state = {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}
    return Prepared(state, tasks, reference)


def _settings(cfg: ContinualConfig, order: list[str]) -> TrainSettings:
    return TrainSettings(
        iterations=cfg.train.iterations, batch_size=cfg.train.batch_size,
        lrs=lrs_for(order, cfg.train.lr, cfg.train.lr_per_task), warmup_steps=cfg.train.warmup_steps,
        weight_decay=cfg.train.weight_decay, label_smoothing=cfg.train.label_smoothing,
        logit_scale=cfg.train.logit_scale, eval_batch_size=cfg.eval.batch_size,
        checkpoint_every=cfg.train.checkpoint_every, bf16=cfg.train.bf16, num_workers=cfg.train.num_workers,
        task_agnostic=cfg.eval.task_agnostic, class_incremental=cfg.data.cil is not None, seed=cfg.seed)


def run_method(cfg: ContinualConfig, prepared: Prepared, index: int, folder: Path,
               progress: Any = None) -> dict[str, Any]:
    """One method over the whole sequence in ``folder`` (resumable); returns its results entry."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    mcfg = cfg.methods[index]
    sub = RunFolder(folder)
    procs = join_processes()
    procs.barrier()  # all processes see the same `finished` before the main one may write results
    if sub.finished:
        return sub.read_results()
    order = [t.name for t in prepared.tasks]
    device = procs.device
    seed_everything(cfg.seed)
    backbone = get("backbone", cfg.backbone)(cfg.pretrained)
    backbone.model.load_state_dict(prepared.backbone_state)
    backbone.model.to(device)
    ctx = Context(backbone=backbone, tasks=prepared.tasks, settings=_settings(cfg, order), device=device,
                  reference=prepared.reference, processes=procs)
    method = get("method", mcfg.name)(**mcfg.model_dump(exclude={"name"}))
    acc = run_sequence(method, ctx, sub.checkpoints, progress)
    if cfg.data.cil:
        sizes = [len(t.test) for t in prepared.tasks]
        steps = [sum(a * n for a, n in zip(row[: i + 1], sizes)) / sum(sizes[: i + 1]) for i, row in enumerate(acc)]
        entry = {"accuracy": acc, "step_accuracy": steps, **cil_metrics(steps)}
    else:
        entry = {"accuracy": acc, **mtil_metrics(acc)}
    if procs.is_main:
        sub.path.mkdir(parents=True, exist_ok=True)
        sub.write_results(entry)
    return entry


def _worker(cfg: ContinualConfig, prepared: Prepared, index: int, folder: Path) -> dict[str, Any]:
    catalog.load_all()  # a spawned process starts with empty registries
    return run_method(cfg, prepared, index, folder)


def run(cfg: ContinualConfig, prepared: Prepared, folder: RunFolder, console: Console) -> dict[str, Any]:
    """Every method of ``cfg.methods`` in its own sub-folder; ``workers`` > 1 runs them side by side
    in separate processes (one torch thread each is the fastest use of small CPUs)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    labels = [m.name for m in cfg.methods]
    entries: dict[str, dict[str, Any]] = {}

    def done(label: str, entry: dict[str, Any]) -> None:
        entries[label] = entry
        folder.log(f"{label}: " + ", ".join(f"{k} {entry[k]:.1f}" for k in ("transfer", "avg", "last") if k in entry))
        console.print(f"[green]done[/green] {label}")

    if cfg.workers > 1 and join_processes().world == 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            futures = {pool.submit(_worker, cfg, prepared, i, folder.path / label): label
                       for i, label in enumerate(labels)}
            with console.status(f"running {len(labels)} methods in {cfg.workers} processes"):
                for future in as_completed(futures):
                    done(futures[future], future.result())
    else:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            for i, label in enumerate(labels):
                job = bar.add_task(label, total=cfg.train.iterations)

                def progress(task_name: str, step: int, total: int, job=job, label=label) -> None:
                    bar.update(job, completed=step, total=total, description=f"{label} · {task_name}")

                done(label, run_method(cfg, prepared, i, folder.path / label, progress))
                bar.remove_task(job)
    order = [t.name for t in prepared.tasks]
    return {"order": order, "protocol": "cil" if cfg.data.cil else "mtil",
            "methods": {label: entries[label] for label in labels}}


def report(results: dict[str, Any], folder: RunFolder, console: Console) -> None:
    """Terminal table + report.md with the per-dataset rows and one accuracy heatmap per method."""
    order = results["order"]
    if results.get("protocol") == "cil":
        return _report_cil(results, folder, console)
    rows = [{"method": name, "Transfer": r["transfer"], "Avg": r["avg"], "Last": r["last"]}
            for name, r in results["methods"].items()]
    print_table("Continual learning: Transfer / Avg / Last (%)", rows, console=console)
    sections = [Section("Summary", text=f"Task order: {', '.join(order)}.", rows=rows)]
    for name, r in results["methods"].items():
        png = plots.accuracy_heatmap(r["accuracy"], order, folder.path / f"heatmap_{name}.png",
                                     title=f"{name}: accuracy after each task (%)")
        per = r["per_dataset"]
        sections.append(Section(name, rows=[{"dataset": d, "Transfer": per["transfer"][j], "Avg": per["avg"][j],
                                             "Last": per["last"][j]} for j, d in enumerate(order)],
                                images=[png]))
    write_report(folder.path, "Continual learning report", sections)


def _report_cil(results: dict[str, Any], folder: RunFolder, console: Console) -> None:
    """CIL: average incremental accuracy and last step, plus the accuracy curve over steps."""
    rows = [{"method": name, "Avg": r["avg"], "Last": r["last"]} for name, r in results["methods"].items()]
    print_table("Class-incremental learning: Avg / Last (%)", rows, console=console)
    steps = list(range(1, len(results["order"]) + 1))
    png = plots.curves(steps, {n: r["step_accuracy"] for n, r in results["methods"].items()},
                       folder.path / "cil_curve.png", "step", "accuracy on seen classes (%)", "CIL accuracy")
    write_report(folder.path, "Class-incremental learning report",
                 [Section("Summary", text=f"{len(steps)} steps.", rows=rows, images=[png])])


register_recipe(Recipe("continual", ContinualConfig, prepare, run, report, multiprocess=True))
