"""Recipe ``kind: visual_prompt``: adapt a frozen classifier with an input prompt + label mapping.

Seed 000 ch. 6: the prompt h(x, θ_p) (eq. 6.1) is trained with cross-entropy on the mapped
logits F_LM(M(h(x))) (eq. 6.2) while the backbone stays frozen. One run trains a list of
``variants`` side by side, each in its own sub-folder: label mappers (hardcoded = VP, random, flm,
ilm, otlm with options) and the references ``full_finetune`` (FF) and ``linear_probe`` (LP), which
replace the head with a new one over the target classes (§6.5.1.2).

Mapping refresh (ILM, OTLM): before every epoch with ``mapper.needs_refresh(epoch)`` the mapping
is recomputed either by an extra no-grad pass over the training set with the current prompt
(``mapping_source: extra_pass``, ILM-VP / the thesis) or from the softmax outputs the training
forward passes of the previous epoch already computed (``train_pass``, no extra pass; the very
first mapping always needs one pass). Each epoch is checkpointed (trainable tensors, optimizer,
scheduler, mapping, RNG), so ``--resume`` continues where a run stopped and reproduces it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, SerializeAsAny, field_validator, model_validator
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Subset

from madapt.backbones.classifier import freeze
from madapt.config import Recipe, Strict, register_recipe
from madapt.data import vp, vp_real
from madapt.errors import ConfigError
from madapt.labelmap import Identity, LabelMapper, mapper_config
from madapt.labelmap.mappers import NoOptions, validate_options
from madapt.peft import PaddingPrompt, PlainInput, build_vpt_deep, supports_vpt_deep
from madapt.prompting.visual_report import mapping_grid, report
from madapt.registry import get
from madapt.runs import Checkpointer, RunFolder, rng_state, seed_everything, set_rng_state
from madapt.training import build_optimizer, warmup_cosine

REFERENCES = ("full_finetune", "linear_probe")
Source = Literal["extra_pass", "train_pass"]


class DataConfig(Strict):
    name: str = Field(..., description="micro target (digits, letters, shapes, textures) "
                                        "or a folder under data_root")
    data_root: str | None = Field(None, description="real data: folder holding the dataset in its standard layout "
                                               "(`madapt data check vp`) or <name>/{train,test}/<class>/*")
    train_per_class: int = Field(40, ge=1, description="micro: generated training images per class")
    test_per_class: int = Field(30, ge=1, description="micro: generated test images per class")
    image_size: int | None = Field(None, ge=8, description="real data: side images are resized to "
                                                           "(default: the backbone input)")
    shots_fraction: float = Field(1.0, gt=0, le=1, description="share of training images kept per class "
                                                               "(Table 6.10: 1 ... 0.001; >= 1 per class)")


class PromptConfig(Strict):
    kind: Literal["padding", "vpt_deep"] = "padding"
    pad: int = Field(30, ge=1, description="padding prompt: border width in pixels (Bahng et al.: 30 of 224)")
    space: Literal["normalized", "pixel"] = Field("normalized",
                                                  description="Bahng et al. / ILM-VP parameterisation")
    tokens: int = Field(10, ge=0, description="vpt_deep: prompt tokens per block")


class TrainConfig(Strict):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(..., gt=0, description="§6.5: 1e4 (ViT-B), 1e2 (ResNet-50) for VP; 0.1 for VPT")
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)
    epochs: int = Field(100, ge=1, description="§6.5: 100 (50 for ViT-L and ConvNeXt-B)")
    batch_size: int = Field(128, ge=1)
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up, then cosine decay per step")
    num_workers: int = Field(0, ge=0, description="real data: DataLoader workers")


class VariantConfig(Strict):
    name: str = Field(..., description="a mapper (hardcoded, random, flm, ilm, otlm) "
                                        "or full_finetune / linear_probe")
    label: str | None = Field(None, description="sub-folder and table name (default: name)")
    options: SerializeAsAny[Strict] = Field(default_factory=NoOptions,
                                            description="the mapper's options, e.g. {solver: greedy}")
    mapping_source: Source | None = Field(None, description="overrides the top-level mapping_source")
    lr: float | None = Field(None, gt=0)
    optimizer: Literal["sgd", "adamw"] | None = None
    weight_decay: float | None = Field(None, ge=0)

    @property
    def tag(self) -> str:
        return self.label or self.name


class VisualPromptConfig(Strict):
    kind: Literal["visual_prompt"]
    seed: int = 0
    backbone: str = Field("micro-source", description="a name from `madapt list backbones`")
    weights: str | None = Field(None, description="local weights file (required for real backbones)")
    data: DataConfig
    prompt: PromptConfig = PromptConfig()
    mapping_source: Source = "extra_pass"
    train: TrainConfig
    eval_batch_size: int = Field(256, ge=1)
    variants: list[VariantConfig] = Field(..., min_length=1)

    @field_validator("variants", mode="before")
    @classmethod
    def _variants(cls, value: Any) -> Any:
        """Names become ``{name: ...}``; each variant's options become its mapper's validated Config."""
        if not isinstance(value, list):
            return value
        out = []
        for i, v in enumerate(value):
            v = {"name": v} if isinstance(v, str) else v
            if isinstance(v, dict) and isinstance(v.get("name"), str):
                where = f"variants.{i}.options"
                if v["name"] in REFERENCES:
                    options = validate_options(NoOptions, v.get("options"), where)
                else:
                    options = mapper_config(v["name"], v.get("options"), where)
                v = {**v, "options": options}
            out.append(v)
        return out

    @model_validator(mode="after")
    def _check(self) -> VisualPromptConfig:
        tags = [v.tag for v in self.variants]
        for i, v in enumerate(self.variants):
            if tags.count(v.tag) > 1:
                raise ConfigError(f"variants.{i}.label", f"'{v.tag}' is used twice",
                                  "a unique label per variant")
        return self


def check_required(cfg: VisualPromptConfig) -> None:
    """Real presets leave ``weights`` and ``data.data_root`` empty: they must be given to run."""
    if cfg.data.name not in vp.MICRO_TARGETS and cfg.data.data_root is None:
        raise ConfigError("data.data_root", f"is missing for dataset '{cfg.data.name}'",
                          "a folder holding the dataset (see `madapt data check vp`) (or a micro dataset: "
                          + ", ".join(vp.MICRO_TARGETS) + ")")
    if cfg.backbone != "micro-source" and cfg.weights is None:
        raise ConfigError("weights", f"is missing for backbone '{cfg.backbone}'",
                          "a local weights file (weights=PATH); nothing is downloaded")


@dataclass
class Prepared:
    backbone: Any  # ClassifierBackbone
    state: dict[str, torch.Tensor]  # pristine backbone weights, restored for every variant
    data: vp.TargetData
    train_index: np.ndarray  # the (sub)sampled training images
    source_names: list[str]


def source_names(backbone: Any) -> list[str]:
    names = getattr(backbone, "classnames", None)
    if names:
        return list(names)
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        info = ImageNetInfo(infer_imagenet_subset(backbone.model))
        if info.num_classes() == backbone.num_classes:
            return [info.index_to_description(i).split(",")[0] for i in range(backbone.num_classes)]
    except Exception:  # no bundled label info for this model: plain indices are fine
        pass
    return [f"class {i}" for i in range(backbone.num_classes)]


def prepare(cfg: VisualPromptConfig) -> Prepared:
    """Backbone, data and subsample: every user-input error surfaces here, before any write."""
    check_required(cfg)
    seed_everything(cfg.seed)
    backbone = get("backbone", cfg.backbone)(cfg.weights)
    side = backbone.input_size[-1]
    if cfg.data.name in vp.MICRO_TARGETS and cfg.data.data_root is None:
        data = vp.load_micro(cfg.data.name, cfg.data.train_per_class, cfg.data.test_per_class, cfg.seed)
    else:
        # standard layouts (torchvision, VPT json, official FGVC files), else the ImageFolder tree
        data = vp_real.load_real(cfg.data.data_root, cfg.data.name, cfg.data.image_size or side)
    n_target = len(data.classnames)
    if any(v.name not in REFERENCES for v in cfg.variants) and n_target > backbone.num_classes:
        raise ConfigError(f"data.name '{cfg.data.name}'",
                          f"has {n_target} classes but backbone '{cfg.backbone}' only {backbone.num_classes}",
                          "n_target <= n_source for one-to-one label mapping")
    if cfg.prompt.kind == "padding":
        PaddingPrompt(backbone.input_size[1:], backbone.mean, backbone.std, cfg.prompt.pad)  # checks pad
    elif not supports_vpt_deep(backbone.model):
        raise ConfigError("prompt.kind",
                          f"vpt_deep with backbone '{cfg.backbone}' ({type(backbone.model).__name__})",
                          "a timm VisionTransformer or SwinTransformer backbone for VPT-deep, "
                          "or prompt.kind padding")
    index = vp.subsample_per_class(data.train_labels, cfg.data.shots_fraction, cfg.seed)
    state = {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}
    return Prepared(backbone, state, data, index, source_names(backbone))


class Learner(nn.Module):
    """input adapter (prompt or plain resize) -> network; keeps a frozen network in eval mode."""

    def __init__(self, adapter: nn.Module, net: nn.Module, finetune: bool) -> None:
        super().__init__()
        self.adapter, self.net, self.finetune = adapter, net, finetune

    def train(self, mode: bool = True) -> Learner:
        super().train(mode)
        if not self.finetune:
            self.net.eval()  # BatchNorm statistics and dropout of the frozen model never change
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold: trainable tensors, plus every buffer when fine-tuning."""
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items()
                if k in keep or (self.finetune and k.startswith("net."))}


def build_learner(cfg: VisualPromptConfig, prepared: Prepared, variant: VariantConfig) -> Learner:
    b, n_target = prepared.backbone, len(prepared.data.classnames)
    model = copy.deepcopy(b.model)
    model.load_state_dict(prepared.state)
    plain = PlainInput(b.input_size[1:], b.mean, b.std)
    if variant.name in REFERENCES:
        model.reset_classifier(n_target)  # a new head over the target classes (FF and LP)
        if variant.name == "linear_probe":
            freeze(model)
            model.get_classifier().requires_grad_(True)
        return Learner(plain, model, finetune=variant.name == "full_finetune")
    freeze(model)
    if cfg.prompt.kind == "vpt_deep":
        return Learner(plain, build_vpt_deep(model, cfg.prompt.tokens), finetune=False)
    prompt = PaddingPrompt(b.input_size[1:], b.mean, b.std, cfg.prompt.pad, cfg.prompt.space)
    return Learner(prompt, model, finetune=False)


def batches(dataset: Any, index: np.ndarray | torch.Tensor, batch_size: int, workers: int = 0):
    """(x, y) batches over ``dataset[index]`` in that order; in-memory arrays skip the DataLoader."""
    index = torch.as_tensor(index, dtype=torch.long)
    if hasattr(dataset, "batch"):
        for start in range(0, len(index), batch_size):
            yield dataset.batch(index[start:start + batch_size])
        return
    yield from DataLoader(Subset(dataset, index.tolist()), batch_size=batch_size, num_workers=workers)


@torch.no_grad()
def mapping_pass(learner: Learner, mapper: LabelMapper, dataset: Any, index: np.ndarray, n_source: int,
                 n_target: int, batch_size: int, workers: int = 0) -> None:
    """The extra pass of ILM-VP: source softmax outputs of the training set with the current prompt."""
    learner.eval()
    acc = mapper.make_accumulator(n_source, n_target)
    for x, y in batches(dataset, index, batch_size, workers):
        acc.update(torch.softmax(learner(x).float(), 1), y)
    mapper.fit_from_stats(acc)


@torch.no_grad()
def evaluate(learner: Learner, mapper: LabelMapper, dataset: Any, batch_size: int,
             workers: int = 0) -> float:
    learner.eval()
    correct = total = 0
    for x, y in batches(dataset, np.arange(len(dataset)), batch_size, workers):
        logits = learner(x)
        out = mapper.transform(logits)
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


def make_mapper(variant: VariantConfig, seed: int) -> LabelMapper:
    """The variant's label mapper; `Identity` for FF / LP, whose new head gives target logits."""
    if variant.name in REFERENCES:
        return Identity()
    return get("mapper", variant.name)(variant.options, run_seed=seed)


def fit_variant(cfg: VisualPromptConfig, prepared: Prepared, variant: VariantConfig,
                checkpoints: Checkpointer | None = None) -> dict[str, Any]:
    """Train one variant (resuming from ``checkpoints``) and return its results entry."""
    seed_everything(cfg.seed)
    t, data, index = cfg.train, prepared.data, prepared.train_index
    n_source, n_target = prepared.backbone.num_classes, len(data.classnames)
    learner = build_learner(cfg, prepared, variant)
    n_out = n_target if variant.name in REFERENCES else n_source  # FF / LP: the new head's outputs
    mapper = make_mapper(variant, cfg.seed)
    source = variant.mapping_source or cfg.mapping_source
    opt = build_optimizer(learner.parameters(), variant.optimizer or t.optimizer, lr=variant.lr or t.lr,
                          weight_decay=variant.weight_decay if variant.weight_decay is not None
                          else t.weight_decay,
                          momentum=t.momentum)
    steps = -(-len(index) // t.batch_size)
    sched = warmup_cosine(opt, min(t.warmup_epochs * steps, t.epochs * steps), t.epochs * steps)
    history: list[dict[str, float]] = []
    start, ckpt = 0, checkpoints.load() if checkpoints else None
    if ckpt is not None:
        s = ckpt.state
        learner.load_state_dict(s["learner"], strict=False)
        opt.load_state_dict(s["optimizer"])
        sched.load_state_dict(s["scheduler"])
        mapper.load_state_dict(s["mapper"])
        set_rng_state(s["rng"])
        start, history = int(ckpt.unit["epoch"]), list(s["history"])
    elif mapper.requires_data:
        mapping_pass(learner, mapper, data.train, index, n_source, n_target, cfg.eval_batch_size,
                     t.num_workers)
    else:
        mapper.fit_shape(n_out, n_target)
    acc = mapper.make_accumulator(n_source, n_target) if mapper.requires_data else None
    for epoch in range(start, t.epochs):
        began = time.perf_counter()
        refresh = acc is not None and epoch + 1 < t.epochs and mapper.needs_refresh(epoch + 1)
        collect = refresh and source == "train_pass"
        learner.train()
        order = torch.randperm(len(index), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        loss_sum = 0.0
        for x, y in batches(data.train, index[order.numpy()], t.batch_size, t.num_workers):
            logits = learner(x)
            if collect:
                acc.update(torch.softmax(logits.detach().float(), 1), y)
            loss = F.cross_entropy(mapper.transform(logits), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
        if collect:
            mapper.fit_from_stats(acc)
            acc.reset()
        elif refresh:
            mapping_pass(learner, mapper, data.train, index, n_source, n_target, cfg.eval_batch_size,
                         t.num_workers)
        history.append({"loss": loss_sum / len(index), "seconds": time.perf_counter() - began})
        if checkpoints is not None:
            checkpoints.save({"epoch": epoch + 1}, {
                "learner": learner.trainable_state(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "mapper": mapper.state_dict(),
                "rng": rng_state(), "history": history})
    accuracy = evaluate(learner, mapper, data.test, cfg.eval_batch_size, t.num_workers)
    entry: dict[str, Any] = {
        "name": variant.name, "accuracy": accuracy, "history": history,
        "mapping_source": source if mapper.mapping_interval else None,
        "trainable_params": sum(p.numel() for p in learner.parameters() if p.requires_grad),
        **mapper.describe(prepared.source_names),
    }
    return entry


def run(cfg: VisualPromptConfig, prepared: Prepared, folder: RunFolder, console: Console) -> dict[str, Any]:
    data = prepared.data
    results: dict[str, Any] = {"dataset": data.name, "backbone": cfg.backbone, "classnames": data.classnames,
                               "n_source": prepared.backbone.num_classes,
                               "train_images": len(prepared.train_index),
                               "shots_fraction": cfg.data.shots_fraction, "variants": {}}
    for variant in cfg.variants:
        sub = RunFolder(folder.path / variant.tag)
        if sub.results_path.is_file():
            results["variants"][variant.tag] = sub.read_results()
            continue
        console.print(f"[bold]{variant.tag}[/bold]: training {cfg.train.epochs} epochs")
        entry = fit_variant(cfg, prepared, variant, sub.checkpoints)
        sub.path.mkdir(parents=True, exist_ok=True)
        sub.write_results(entry)
        folder.log(f"{variant.tag}: accuracy {entry['accuracy']:.2f}")
        results["variants"][variant.tag] = entry
    mapping_grid(results, data, prepared.train_index, folder.path / "mapping.png")
    return results


register_recipe(Recipe("visual_prompt", VisualPromptConfig, prepare, run, report))
