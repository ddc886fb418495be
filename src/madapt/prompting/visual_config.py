"""Config of recipe ``kind: visual_prompt`` (seed 000 ch. 6): every option with the source it follows.

Three prompt recipes, each with the protocol of the code it comes from (reference/vp_labelmap_anchors.md):

- ``prompt.kind: pad`` — Bahng et al.'s PadPrompter, the VP framework of the thesis (§6.5.1.1):
  resize 256 → centre-crop 224, four ``randn`` pads of 30 px added in normalised space; SGD,
  momentum 0.9, no weight decay, 1,000 warm-up steps then cosine per step (``utils.cosine_lr``).
  The thesis keeps this framework and sets 100 epochs, lr 1e4 (ViT-B) / 1e2 (ResNet-50) (§6.5.2.1).
- ``prompt.kind: expansive`` — ILM-VP's expansive prompt: the 32 px (CIFAR, SVHN, GTSRB) or 128 px
  image zero-padded to 224; Adam lr 0.01, 200 epochs, MultiStepLR ×0.1 at 50 % / 72 %, batch 128
  (64 for DTD / OxfordPets), fp16 autocast with a GradScaler.
- ``prompt.kind: vpt_deep`` — VPT-deep with the frozen source head (§6.5.3): SGD momentum 0.9,
  cosine with 10 warm-up epochs, batch 128; the thesis's lr 0.1 and weight decay 1e-4.

``train.selection: best_val`` reports the test accuracy of the epoch with the best validation
accuracy (Table 6.2's splits) and, beside it, the last epoch's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from madapt.config import Strict
from madapt.data import vp
from madapt.errors import ConfigError, closest
from madapt.labelmap import mapper_config
from madapt.labelmap.mappers import NoOptions, validate_options

REFERENCES = ("full_finetune", "linear_probe")
Source = Literal["extra_pass", "train_pass"]
Optimizer = Literal["sgd", "adam", "adamw"]
# ILM-VP's prepare_expansive_data: CIFAR / SVHN native 32 px, GTSRB resized to 32, the rest to 128
ILMVP_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "svhn": 32, "gtsrb": 32}
ILMVP_DEFAULT_SIZE = 128


class DataConfig(Strict):
    name: str = Field(
        ...,
        description="micro target (digits, letters, shapes, textures) "
        "or a dataset under data_root (Table 6.2)",
    )
    data_root: str | None = Field(
        None,
        description="real data: folder holding the dataset in its standard layout "
        "(`madapt data check vp`) or <name>/{train,test}/<class>/*",
    )
    train_per_class: int = Field(40, ge=1, description="micro: generated training images per class")
    val_per_class: int = Field(10, ge=0, description="micro: generated validation images per class")
    test_per_class: int = Field(30, ge=1, description="micro: generated test images per class")
    image_size: int | None = Field(
        None,
        ge=8,
        description="side of the image the prompt receives (default: "
        "the backbone input; expansive: ILM-VP's 32 / 128)",
    )
    shots_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="share of training images kept per class (Table 6.10: 1 ... 0.001; >= 1 per class)",
    )
    holdout: bool = Field(
        True,
        description="hold out Table 6.2's validation images when the dataset has "
        "no validation split of its own (CIFAR: 40k + 10k)",
    )


class PromptConfig(Strict):
    kind: Literal["pad", "expansive", "vpt_deep"] = Field(
        "pad", description="pad: Bahng et al. (the thesis' VP); expansive: ILM-VP; vpt_deep: VPT (§6.5.3)"
    )
    pad: int = Field(30, ge=1, description="pad: width of each of the four pads (Bahng et al.: 30 of 224)")
    tokens: int = Field(10, ge=0, description="vpt_deep: prompt tokens per block")


class TrainConfig(Strict):
    optimizer: Optimizer = Field("sgd", description="Bahng / VPT / thesis: sgd; ILM-VP: adam")
    lr: float = Field(
        ..., gt=0, description="§6.5: 1e4 (ViT-B), 1e2 (ResNet-50) for VP; 0.1 for VPT; ILM-VP 0.01; Bahng 40"
    )
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    epochs: int = Field(100, ge=1, description="§6.5: 100 (50 for ViT-L and ConvNeXt-B); ILM-VP 200")
    batch_size: int = Field(128, ge=1)
    schedule: Literal["cosine", "multistep"] = Field(
        "cosine", description="cosine: warm-up then cosine per step (Bahng, VPT); multistep: ILM-VP"
    )
    warmup_steps: int = Field(0, ge=0, description="cosine: linear warm-up steps (Bahng et al.: 1000)")
    warmup_epochs: int = Field(0, ge=0, description="cosine: warm-up in epochs (VPT: 10)")
    milestones: list[float] = Field(
        [0.5, 0.72], description="multistep: lr x gamma after these shares of the epochs (ILM-VP: 0.5, 0.72)"
    )
    gamma: float = Field(0.1, gt=0, description="multistep: factor at each milestone")
    selection: Literal["best_val", "final"] = Field(
        "best_val", description="the reported epoch: best validation accuracy, or the last"
    )
    num_workers: int = Field(0, ge=0, description="real data: DataLoader workers")
    pin_memory: bool = Field(True, description="real data on CUDA: page-locked batches")

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainConfig:
        if self.warmup_steps and self.warmup_epochs:
            raise ConfigError("train.warmup_steps", "given with train.warmup_epochs", "one warm-up length")
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ConfigError("train.milestones", str(self.milestones), "shares of the epochs in (0, 1]")
        return self


class VariantConfig(Strict):
    name: str = Field(
        ..., description="a mapper (hardcoded, random, flm, ilm, otlm) or full_finetune / linear_probe"
    )
    label: str | None = Field(None, description="sub-folder and table name (default: name)")
    options: SerializeAsAny[Strict] = Field(
        default_factory=NoOptions, description="the mapper's options, e.g. {solver: greedy}"
    )
    mapping_source: Source | None = Field(None, description="overrides the top-level mapping_source")
    lr: float | None = Field(None, gt=0)
    optimizer: Optimizer | None = None
    weight_decay: float | None = Field(None, ge=0)
    shots_fraction: float | None = Field(
        None, gt=0, le=1, description="overrides data.shots_fraction (Table 6.10 / Figure 6.2 in one run)"
    )
    source: str | None = Field(
        None,
        description="a key of `sources`: train on that source model instead "
        "(Figure 6.3: IN-1K vs IN-22K in one run)",
    )

    @property
    def tag(self) -> str:
        return self.label or self.name


class SourceModelConfig(Strict):
    backbone: str = Field(..., description="a name from `madapt list backbones`")
    weights: str | None = Field(None, description="local weights file (required for real backbones)")


class VisualPromptConfig(Strict):
    kind: Literal["visual_prompt"]
    seed: int = 0
    backbone: str = Field("micro-source", description="a name from `madapt list backbones`")
    weights: str | None = Field(None, description="local weights file (required for real backbones)")
    sources: dict[str, SourceModelConfig] = Field(
        default_factory=dict,
        description="further source models variants may name (`sources.<key>.weights=PATH`)",
    )
    data: DataConfig
    prompt: PromptConfig = PromptConfig()
    mapping_source: Source = "extra_pass"
    train: TrainConfig
    eval_batch_size: int = Field(256, ge=1)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype (fp16 adds a GradScaler, as ILM-VP's AMP)"
    )
    channels_last: bool | None = Field(None, description="channels-last memory (default: CNNs on CUDA)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
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
                raise ConfigError(
                    f"variants.{tags.index(v.tag)}.label",
                    f"'{v.tag}' is used twice",
                    "a unique label per variant",
                )
            if v.source is not None and v.source not in self.sources:
                raise ConfigError(
                    f"variants.{i}.source",
                    f"'{v.source}'" + closest(v.source, self.sources),
                    "a key of sources: " + (", ".join(self.sources) or "none defined"),
                )
        return self


def backbone_of(cfg: VisualPromptConfig, variant: VariantConfig) -> tuple[str, str | None]:
    """(backbone name, weights) a variant runs on."""
    if variant.source is None:
        return cfg.backbone, cfg.weights
    source = cfg.sources[variant.source]
    return source.backbone, source.weights


def check_required(cfg: VisualPromptConfig) -> None:
    """Real presets leave ``weights`` and ``data.data_root`` empty: they must be given to run."""
    if cfg.data.name not in vp.MICRO_TARGETS and cfg.data.data_root is None:
        raise ConfigError(
            "data.data_root",
            f"is missing for dataset '{cfg.data.name}'",
            "a folder holding the dataset (see `madapt data check vp`) (or a micro dataset: "
            + ", ".join(vp.MICRO_TARGETS)
            + ")",
        )
    for v in cfg.variants:
        name, weights = backbone_of(cfg, v)
        if name != "micro-source" and weights is None:
            field = "weights" if v.source is None else f"sources.{v.source}.weights"
            raise ConfigError(
                field,
                f"is missing for backbone '{name}'",
                "a local weights file (weights=PATH); nothing is downloaded",
            )


def image_side(cfg: VisualPromptConfig, input_side: int) -> int:
    """Side of the images the data pipeline hands to the prompt."""
    if cfg.data.image_size is not None:
        return cfg.data.image_size
    if cfg.prompt.kind == "expansive":
        return ILMVP_IMAGE_SIZE.get(cfg.data.name, ILMVP_DEFAULT_SIZE)
    return input_side
