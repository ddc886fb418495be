"""Recipe ``kind: visual_prompt``: adapt a frozen classifier with an input prompt + label mapping.

Seed 000 ch. 6: the prompt h(x, θ_p) (eq. 6.1) is trained with cross-entropy on the mapped
logits F_LM(M(h(x))) (eq. 6.2) while the backbone stays frozen. One run trains a list of
``variants`` side by side, each in its own sub-folder: label mappers (hardcoded = VP, random, flm,
ilm, otlm with options) and the references ``full_finetune`` (FF) and ``linear_probe`` (LP), which
replace the head with a new one over the target classes (§6.5.1.2). A variant may override the
training share (Table 6.10, Figure 6.2) or the source backbone (Figure 6.3), so one run holds a
whole table of the thesis and its report draws the figure.

Options and their sources: `madapt.prompting.visual_config`; the loop (device, precision,
validation selection, multi-process): `madapt.prompting.visual_train`; tables and figures:
`madapt.prompting.visual_report`. Each epoch is checkpointed, so ``--resume`` continues where a
run stopped and reproduces it. A run with a frequency mapper and OTLM makes one more no-grad pass
with the initial prompt for Figure 6.5's class-average logits (``initial_logits.safetensors``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from madapt.backbones.classifier import ClassifierBackbone, freeze
from madapt.config import Recipe, register_recipe
from madapt.data import vp, vp_real
from madapt.errors import ConfigError
from madapt.labelmap import Identity, LabelMapper
from madapt.peft import ExpansivePrompt, PadPrompter, PlainInput, build_vpt_deep, supports_vpt_deep
from madapt.prompting.visual_config import (
    REFERENCES,
    VariantConfig,
    VisualPromptConfig,
    backbone_of,
    check_required,
    image_side,
)
from madapt.prompting.visual_report import report, write_figures
from madapt.prompting.visual_train import Learner, Plan, Runtime, class_mean_logits, train_variant
from madapt.registry import get
from madapt.runs import Checkpointer, RunFolder, save_tensors, seed_everything
from madapt.training import build_optimizer, join_processes, loader_workers, warmup_cosine


@dataclass
class Source:
    """A frozen source model and what the variants on it need."""

    backbone: ClassifierBackbone
    state: dict[str, torch.Tensor]  # pristine weights, restored for every variant
    names: list[str]  # source class names (reports)


@dataclass
class Prepared:
    sources: dict[str, Source]  # by backbone name
    data: vp.TargetData
    image_side: int


def source_names(backbone: ClassifierBackbone) -> list[str]:
    if backbone.classnames:
        return list(backbone.classnames)
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        info = ImageNetInfo(infer_imagenet_subset(backbone.model))
        if info.num_classes() == backbone.num_classes:
            return [info.index_to_description(i).split(",")[0] for i in range(backbone.num_classes)]
    except Exception:  # noqa: BLE001, S110  (no bundled label info for this model: plain indices are fine)
        pass
    return [f"class {i}" for i in range(backbone.num_classes)]


def prepare(cfg: VisualPromptConfig) -> Prepared:
    """Backbones and data: every user-input error surfaces here, before any write."""
    check_required(cfg)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "'cuda' but torch sees no CUDA device", "device=auto or device=cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    sources: dict[str, Source] = {}
    for v in cfg.variants:
        name, weights = backbone_of(cfg, v)
        if name not in sources:
            b = get("backbone", name)(weights)
            sources[name] = Source(
                b, {k: t.detach().clone() for k, t in b.model.state_dict().items()}, source_names(b)
            )
    sides = {n: s.backbone.input_size[1:] for n, s in sources.items()}
    if len(set(sides.values())) > 1:
        raise ConfigError("sources", f"input sizes {sides}", "source models sharing one input size")
    input_side = next(iter(sides.values()))[-1]
    side = image_side(cfg, input_side)
    if cfg.data.name in vp.MICRO_TARGETS and cfg.data.data_root is None:
        d = cfg.data
        data = vp.load_micro(d.name, d.train_per_class, d.test_per_class, cfg.seed, d.val_per_class)
    else:
        # standard layouts (torchvision, VPT json, official FGVC files), else the ImageFolder tree
        transform = vp.image_transform(side, center_crop=cfg.prompt.kind != "expansive")
        data = vp_real.load_real(cfg.data.data_root, cfg.data.name, transform, cfg.data.holdout)
    prepared = Prepared(sources, data, side)
    for i, v in enumerate(cfg.variants):
        _check_variant(cfg, prepared, v, i)
    return prepared


def _check_variant(cfg: VisualPromptConfig, prepared: Prepared, variant: VariantConfig, i: int) -> None:
    name = backbone_of(cfg, variant)[0]
    b = prepared.sources[name].backbone
    n_target = len(prepared.data.classnames)
    if variant.name not in REFERENCES:
        k = getattr(variant.options, "sources_per_class", 1)
        if n_target * k > b.num_classes:
            raise ConfigError(
                f"data.name '{cfg.data.name}' (variants.{i})",
                f"has {n_target} classes x {k} sources but backbone '{name}' has {b.num_classes}",
                "n_target * sources_per_class <= n_source for label mapping",
            )
        build_adapter(cfg, b, prepared.image_side)  # a bad pad / image size fails here
    if cfg.prompt.kind == "vpt_deep" and not supports_vpt_deep(b.model):
        raise ConfigError(
            "prompt.kind",
            f"vpt_deep with backbone '{name}' ({type(b.model).__name__})",
            "a timm VisionTransformer or SwinTransformer backbone "
            "for VPT-deep, or prompt.kind pad / expansive",
        )


def build_adapter(cfg: VisualPromptConfig, b: ClassifierBackbone, side: int) -> nn.Module:
    """The input-side prompt (`madapt.peft.visual_prompt`) of the variant's mapper runs."""
    size = (side, side)
    if cfg.prompt.kind == "pad":
        return PadPrompter(b.input_size[1:], b.mean, b.std, cfg.prompt.pad)
    if cfg.prompt.kind == "expansive":
        return ExpansivePrompt(size, b.input_size[1:], b.mean, b.std)
    return PlainInput(b.input_size[1:], b.mean, b.std)


def build_learner(cfg: VisualPromptConfig, prepared: Prepared, variant: VariantConfig) -> Learner:
    source = prepared.sources[backbone_of(cfg, variant)[0]]
    b, n_target = source.backbone, len(prepared.data.classnames)
    model = copy.deepcopy(b.model)
    model.load_state_dict(source.state)
    if variant.name in REFERENCES:
        model.reset_classifier(n_target)  # a new head over the target classes (FF and LP)
        if variant.name == "linear_probe":
            freeze(model)
            model.get_classifier().requires_grad_(True)
        return Learner(
            PlainInput(b.input_size[1:], b.mean, b.std), model, finetune=variant.name == "full_finetune"
        )
    freeze(model)
    net = build_vpt_deep(model, cfg.prompt.tokens) if cfg.prompt.kind == "vpt_deep" else model
    return Learner(build_adapter(cfg, b, prepared.image_side), net, finetune=False)


def make_mapper(variant: VariantConfig, seed: int) -> LabelMapper:
    """The variant's label mapper; `Identity` for FF / LP, whose new head gives target logits."""
    if variant.name in REFERENCES:
        return Identity()
    return get("mapper", variant.name)(variant.options, run_seed=seed)


def make_optimizer(
    cfg: VisualPromptConfig, variant: VariantConfig, learner: Learner
) -> torch.optim.Optimizer:
    t = cfg.train
    name, lr = variant.optimizer or t.optimizer, variant.lr or t.lr
    decay = t.weight_decay if variant.weight_decay is None else variant.weight_decay
    if name == "adam":  # ILM-VP: torch.optim.Adam(visual_prompt.parameters(), lr=0.01)
        return torch.optim.Adam(
            [p for p in learner.parameters() if p.requires_grad], lr=lr, weight_decay=decay
        )
    return build_optimizer(learner.parameters(), name, lr=lr, weight_decay=decay, momentum=t.momentum)


def make_scheduler(
    cfg: VisualPromptConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> LambdaLR:
    """Per-step schedule: warm-up + cosine (Bahng's ``cosine_lr``, VPT), or ILM-VP's MultiStepLR,
    which steps per epoch at ``int(share * epochs)``: the factor is constant within an epoch."""
    t = cfg.train
    total = t.epochs * steps_per_epoch
    if t.schedule == "cosine":
        return warmup_cosine(optimizer, min(t.warmup_steps + t.warmup_epochs * steps_per_epoch, total), total)
    milestones = [int(m * t.epochs) for m in t.milestones]
    return LambdaLR(optimizer, lambda step: t.gamma ** sum(step // steps_per_epoch >= m for m in milestones))


def runtime(cfg: VisualPromptConfig, backbone: ClassifierBackbone) -> Runtime:
    procs = join_processes()
    device = procs.device if cfg.device == "auto" else torch.device(cfg.device)
    convolutional = any(
        isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in backbone.model.modules()
    )
    channels_last = (
        cfg.channels_last if cfg.channels_last is not None else (device.type == "cuda" and convolutional)
    )  # a patch-embedding convolution alone does not need it
    workers = loader_workers(cfg.train.num_workers)
    return Runtime(device, cfg.precision, channels_last, workers, cfg.train.pin_memory, procs)


def fit_variant(
    cfg: VisualPromptConfig,
    prepared: Prepared,
    variant: VariantConfig,
    checkpoints: Checkpointer | None = None,
) -> dict[str, Any]:
    """Train one variant (resuming from ``checkpoints``) and return its results entry."""
    seed_everything(cfg.seed)  # every variant: the same prompt init and data order
    t, data = cfg.train, prepared.data
    source = prepared.sources[backbone_of(cfg, variant)[0]]
    learner = build_learner(cfg, prepared, variant)
    mapper = make_mapper(variant, cfg.seed)
    rt = runtime(cfg, source.backbone)
    learner.to(rt.device)
    if rt.channels_last:
        learner.to(memory_format=torch.channels_last)
    fraction = variant.shots_fraction or cfg.data.shots_fraction
    index = vp.subsample_per_class(data.train_labels, fraction, cfg.seed)
    optimizer = make_optimizer(cfg, variant, learner)
    scheduler = make_scheduler(cfg, optimizer, -(-len(index) // t.batch_size))
    n_target = len(data.classnames)
    plan = Plan(
        data,
        index,
        n_target if variant.name in REFERENCES else source.backbone.num_classes,
        n_target,
        t.epochs,
        t.batch_size,
        cfg.eval_batch_size,
        variant.mapping_source or cfg.mapping_source,
        t.selection == "best_val" and data.val is not None,
        cfg.seed,
    )
    entry = train_variant(learner, mapper, optimizer, scheduler, plan, rt, checkpoints)
    return {
        "name": variant.name,
        "backbone": backbone_of(cfg, variant)[0],
        "shots_fraction": fraction,
        "train_images": len(index),
        "options": variant.options.model_dump(mode="json"),
        **entry,
        "mapping_source": plan.mapping_source if mapper.mapping_interval else None,
        "trainable_params": learner.trained_numel(),
        "encoder_params": sum(
            p.numel()
            for n, p in source.backbone.model.named_parameters()
            if not n.startswith(_head_prefix(source.backbone.model))
        ),
        **mapper.describe(source.names),
    }


def _head_prefix(model: nn.Module) -> str:
    head = model.get_classifier()
    return next((n for n, m in model.named_modules() if m is head), "head")


def figure_6_5_variant(cfg: VisualPromptConfig) -> VariantConfig | None:
    """Figure 6.5 compares a frequency mapping with OTLM at the first epoch: it applies when the
    run has both on the main backbone and training share; returns the OTLM variant."""
    main = [v for v in cfg.variants if v.source is None and v.shots_fraction is None]
    if not any(v.name in ("flm", "ilm") for v in main):
        return None
    return next((v for v in main if v.name == "otlm"), None)


def initial_class_logits(cfg: VisualPromptConfig, prepared: Prepared, variant: VariantConfig) -> torch.Tensor:
    """Class-average source logits under the initial prompt, the one every variant starts from."""
    seed_everything(cfg.seed)
    learner = build_learner(cfg, prepared, variant)
    rt = runtime(cfg, prepared.sources[cfg.backbone].backbone)
    learner.to(rt.device)
    index = vp.subsample_per_class(prepared.data.train_labels, cfg.data.shots_fraction, cfg.seed)
    return class_mean_logits(
        learner, prepared.data.train, index, len(prepared.data.classnames), cfg.eval_batch_size, rt
    )


def run(cfg: VisualPromptConfig, prepared: Prepared, folder: RunFolder, console: Console) -> dict[str, Any]:
    data = prepared.data
    main = join_processes().is_main
    first = next(iter(prepared.sources.values())).backbone
    results: dict[str, Any] = {
        "dataset": data.name,
        "backbone": cfg.backbone,
        "classnames": data.classnames,
        "n_source": first.num_classes,
        "train_images": len(data.train),
        "val_images": 0 if data.val is None else len(data.val),
        "shots_fraction": cfg.data.shots_fraction,
        "prompt": cfg.prompt.kind,
        "variants": {},
    }
    logits_file = folder.path / "initial_logits.safetensors"
    if figure_6_5_variant(cfg) is not None and not logits_file.is_file():
        mean_logits = initial_class_logits(cfg, prepared, figure_6_5_variant(cfg))
        if main:
            save_tensors(logits_file, {"mean_logits": mean_logits})
    for variant in cfg.variants:
        sub = RunFolder(folder.path / variant.tag)
        if sub.results_path.is_file():
            results["variants"][variant.tag] = sub.read_results()
            continue
        console.print(f"[bold]{variant.tag}[/bold]: training {cfg.train.epochs} epochs")
        entry = fit_variant(cfg, prepared, variant, sub.checkpoints)
        if main:
            sub.path.mkdir(parents=True, exist_ok=True)
            sub.write_results(entry)
            folder.log(f"{variant.tag}: accuracy {entry['accuracy']:.2f}")
        results["variants"][variant.tag] = entry
    if main:
        results["figures"] = write_figures(results, data, folder.path)
    return results


register_recipe(Recipe("visual_prompt", VisualPromptConfig, prepare, run, report, multiprocess=True))
