"""Recipe ``kind: fewshot``: few-shot prompt tuning of CLIP, methods side by side, seeds 1-3 (seed 003 §4.1).

One run trains every method of ``methods`` on every dataset of ``data.datasets`` for every seed of
``seed``, each in its own sub-folder ``<dataset>/<label>/seed<s>`` (resumable on its own), and ends
with one report: test accuracy mean ± std over seeds, trainable parameters, GFLOPs, Adapt's final
per-layer context lengths and its live-token curve. Methods are named entries of the
``fewshot_method`` registry with their own options; ``label`` tells two entries of one method apart
(``{name: adapt, label: adapt_t16, t_target: 16}``). ``select`` adds rows that pick, per dataset, the
entry with the best mean validation accuracy (Table 1's "Adapt (Adaptive T_target)").

Epochs and batch size are the method's published ones (its Config fields ``epochs`` and
``batch_size``) unless ``train.epochs`` / ``train.batch_size`` override them for every method.
Under ``accelerate launch`` every process trains the same run on its slice of each batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import (
    Field,
    SerializationInfo,
    SerializeAsAny,
    ValidationError,
    model_serializer,
    model_validator,
)
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from madapt.backbones.clip import TINY_ARCHS
from madapt.config import Recipe, Strict, register_recipe
from madapt.errors import ConfigError, closest
from madapt.prompting.fewshot import FewShotContext, Settings, fit, steps_per_epoch
from madapt.prompting.fewshot_data import DataConfig, FewShotData, load_data
from madapt.prompting.fewshot_report import aggregate, report
from madapt.registry import get
from madapt.runs import RunFolder, seed_everything
from madapt.training import join_processes, loader_workers


class MethodEntry(Strict):
    """One row of the comparison: a ``label`` and the validated Config of a registered few-shot method.

    Written flat in YAML (``{name: coop, label: coop_ep50, epochs: 50}``) and saved back flat.
    """

    label: str
    options: SerializeAsAny[Strict]

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or ("name" not in value and "options" not in value):
            raise ConfigError("methods", f"found {value!r}", "a method name or {name: ..., <options>}")
        if "options" in value:
            return value
        options = {k: v for k, v in value.items() if k != "label"}
        method = get("fewshot_method", str(options["name"]))
        try:
            config = method.Config.model_validate(options)
        except ValidationError as err:  # -> one line naming the option
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            hint = closest(str(first["loc"][-1]), method.Config.model_fields) if first["loc"] else ""
            raise ConfigError(
                f"methods ({options['name']}).{loc}",
                first["msg"] + hint,
                "options: " + ", ".join(method.Config.model_fields),
            ) from None
        if method.trains and not {"epochs", "batch_size"} <= set(method.Config.model_fields):
            raise ConfigError(
                f"fewshot_method '{options['name']}'",
                "has no epochs/batch_size options",
                "a Config with the method's published epochs and batch_size",
            )
        return {"label": str(value.get("label", options["name"])), "options": config}

    @model_serializer(mode="plain")
    def _to_flat(self, info: SerializationInfo) -> dict[str, Any]:
        return {"label": self.label, **self.options.model_dump(mode=info.mode)}

    @property
    def method(self) -> Any:
        return get("fewshot_method", self.options.name)


class TrainConfig(Strict):
    epochs: int | None = Field(None, ge=1, description="overrides every method's published epochs")
    batch_size: int | None = Field(None, ge=1, description="overrides every method's published batch size")
    warmup_epochs: int = Field(1, ge=0, description="Dassl: WARMUP_EPOCH 1, constant")
    warmup_lr: float = Field(1e-5, gt=0, description="Dassl: WARMUP_CONS_LR")
    precision: Literal["fp32", "amp"] = Field(
        "fp32", description="amp: autocast fp16 + grad scaler on GPU, bf16 on CPU (DPL/Adapt train in fp32)"
    )
    checkpoint_every: int = Field(200, ge=1, description="iterations between mid-epoch checkpoints")
    num_workers: int = Field(0, ge=0)


class SelectConfig(Strict):
    label: str = Field(..., description="the report row")
    among: list[str] = Field(
        ..., min_length=2, description="method labels; per dataset the best mean val accuracy wins"
    )


class FewShotConfig(Strict):
    kind: Literal["fewshot"]
    seed: int | list[int] = Field(
        [1, 2, 3], description="one seed or a list (CoOp scripts: 1, 2, 3), aggregated"
    )
    backbone: str = Field("micro-clip", description="a name from `madapt list backbones`")
    pretrained: str | None = Field(None, description="local weights path or cached open_clip tag")
    data_root: str | None = Field(None, description="collection coop: the folder holding CoOp's datasets")
    data: DataConfig
    train: TrainConfig = TrainConfig()
    eval_batch_size: int = Field(100, ge=1)
    methods: list[MethodEntry] = Field(..., min_length=1)
    select: list[SelectConfig] = Field(default_factory=list)
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's)")

    @property
    def seeds(self) -> list[int]:
        return [self.seed] if isinstance(self.seed, int) else list(self.seed)

    @model_validator(mode="after")
    def _check(self) -> FewShotConfig:
        labels = [m.label for m in self.methods]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise ConfigError(
                    f"methods.{i}.label", f"'{label}' is used twice", "a unique label per entry"
                )
        for i, sel in enumerate(self.select):
            for label in sel.among:
                if label not in labels:
                    raise ConfigError(
                        f"select.{i}.among",
                        f"'{label}' is not a method label" + closest(label, labels),
                        "labels of entries in methods",
                    )
        if not self.seeds:
            raise ConfigError("seed", "is an empty list", "one seed or a list of seeds")
        return self


def schedule_of(cfg: FewShotConfig, entry: MethodEntry) -> tuple[int, int]:
    """(epochs, batch size) of one entry: the recipe's override, else the method's published values."""
    if not entry.method.trains:
        return 0, cfg.train.batch_size or 1
    return (cfg.train.epochs or entry.options.epochs, cfg.train.batch_size or entry.options.batch_size)


@dataclass
class Prepared:
    backbone: Any  # ClipBackbone, frozen
    data: FewShotData


def prepare(cfg: FewShotConfig) -> Prepared:
    """Backbone and data (every user-input error surfaces here, before the run folder is written)."""
    world = join_processes().world
    for entry in cfg.methods:
        batch = schedule_of(cfg, entry)[1]
        if entry.method.trains and batch % world:
            raise ConfigError(
                f"methods ({entry.label}) batch_size",
                f"{batch} does not split over {world} processes",
                f"a multiple of {world} (train.batch_size=...)",
            )
    if cfg.pretrained is None and cfg.backbone not in ("micro-clip", *TINY_ARCHS):
        raise ConfigError(
            "pretrained",
            f"is missing for backbone '{cfg.backbone}'",
            "a local weights file (pretrained=PATH) or a cached open_clip tag; nothing is downloaded",
        )
    seed_everything(0)
    backbone = get("backbone", cfg.backbone)(cfg.pretrained)
    backbone.model.requires_grad_(False)
    for entry in cfg.methods:  # options that cannot fit this backbone fail now, not after other runs
        entry.method(entry.options).check(backbone)
    return Prepared(backbone, load_data(cfg.data, cfg.data_root, backbone, cfg.seeds))


def run_one(
    cfg: FewShotConfig,
    prepared: Prepared,
    entry: MethodEntry,
    dataset: str,
    seed: int,
    folder: RunFolder,
    report_step: Any = None,
) -> dict[str, Any]:
    """One (method, dataset, seed) in its sub-folder, resumed from its checkpoint; returns its entry."""
    sub = RunFolder(folder.path / dataset / entry.label / f"seed{seed}")
    procs = join_processes()
    procs.barrier()
    if sub.finished:
        return sub.read_results()
    splits = prepared.data.splits(dataset, seed, folder)
    epochs, batch = schedule_of(cfg, entry)
    backbone = copy.deepcopy(prepared.backbone)
    backbone.model.to(procs.device)
    ctx = FewShotContext(
        backbone,
        splits.classnames,
        splits.templates,
        procs.device,
        epochs,
        steps_per_epoch(len(splits.train), batch),
        processes=procs,
    )
    t = cfg.train
    settings = Settings(
        epochs=epochs,
        batch_size=batch,
        seed=seed,
        warmup_epochs=t.warmup_epochs,
        warmup_lr=t.warmup_lr,
        amp=t.precision == "amp",
        checkpoint_every=t.checkpoint_every,
        eval_batch_size=cfg.eval_batch_size,
        num_workers=loader_workers(t.num_workers),
    )
    result = fit(entry.method(entry.options), ctx, splits, settings, sub.checkpoints, report_step)
    result.update(method=entry.options.name, shots=cfg.data.shots, train_size=len(splits.train))
    schedule = result["summary"].get("schedule")
    if schedule is not None and procs.is_main:  # Adapt's pruning plan, adjusted or not, goes into the log
        folder.log(f"{dataset} {entry.label} seed {seed}: pruning schedule: {schedule['note']}")
    if procs.is_main:
        sub.path.mkdir(parents=True, exist_ok=True)
        sub.write_results(result)
    return result


def run(cfg: FewShotConfig, prepared: Prepared, folder: RunFolder, console: Console) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        for dataset in cfg.data.datasets:
            for entry in cfg.methods:
                for seed in cfg.seeds:
                    job = bar.add_task(f"{dataset} · {entry.label} · seed {seed}", total=None)

                    def step(done: int, total: int, job=job) -> None:
                        bar.update(job, completed=done, total=total)

                    result = run_one(cfg, prepared, entry, dataset, seed, folder, step)
                    bar.remove_task(job)
                    runs.setdefault(dataset, {}).setdefault(entry.label, {})[str(seed)] = result
                    folder.log(f"{dataset} {entry.label} seed {seed}: test {result['test']:.2f}")
    results = {
        "collection": cfg.data.collection,
        "backbone": cfg.backbone,
        "datasets": list(cfg.data.datasets),
        "labels": [m.label for m in cfg.methods],
        "seeds": cfg.seeds,
        "shots": cfg.data.shots,
        "select": [s.model_dump() for s in cfg.select],
        "runs": runs,
    }
    results["table"] = aggregate(results)
    return results


register_recipe(Recipe("fewshot", FewShotConfig, prepare, run, report, multiprocess=True))
