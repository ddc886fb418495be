"""The config of a continual run (``kind: continual``): data, training protocol, evaluation, methods.

Defaults are ZSCL's MTIL protocol (seed 000 §3.5.1-3.5.2; reference notes §1-2): per task 1000
iterations of batch 64, AdamW, 100 warmup steps then cosine, label smoothing 0.2, logit scale 100.
Each method's options are its own pydantic ``Config`` (registered with the method), validated here
once, so a typo in a method option is one line naming ``methods.<i>.<field>``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from madapt.config import Strict
from madapt.continual.method import MethodConfig
from madapt.errors import ConfigError, closest
from madapt.registry import get, names

RANDOM_INIT = "random"


class DataConfig(Strict):
    collection: Literal["micro", "mtil", "cil"] = Field(
        "micro", description="generated micro world, real MTIL or CIL folders"
    )
    order: list[str] = Field(default_factory=list, description="datasets in training order (seed 000 §3.5.1)")
    cil: str | None = Field(
        None,
        description="class-incremental setting: cifar100/10|20|50, tinyimagenet/5|10|20, "
        "micro/<steps> (seed 000 §3.5.1.1)",
    )
    shots: int | None = Field(None, ge=1, description="few-shot MTIL: images per class (ConDU: 5)")
    train_size: int = Field(1200, ge=1, description="micro: generated training images per domain")
    test_size: int = Field(1000, ge=1, description="micro: generated test images per domain (>= 1,000)")
    reference_images: str | None = Field(
        None,
        description="real data: folder of reference images (ZSCL MTIL: "
        "ImageNet/train; CIL: Conceptual Captions images)",
    )
    reference_captions: str | None = Field(
        None, description="real data: caption file (ZSCL: Conceptual Captions)"
    )
    reference_size: int = Field(2000, ge=1, description="micro: generated reference image/caption pairs")


class TrainConfig(Strict):
    iterations: int = Field(1000, gt=0, description="steps per task (ZSCL: 1000; few-shot: 500)")
    epochs: float | None = Field(
        None,
        gt=0,
        description="if set, each task trains this many passes over its "
        "training split instead (ZSCL's CIL code: 1 epoch per step)",
    )
    batch_size: int = Field(64, gt=0, description="ZSCL: 64; ConDU and few-shot: 32")
    accumulate: int = Field(
        1, ge=1, description="micro-batches per step (gradient accumulation: same step, less memory)"
    )
    lr: float = Field(1e-5, gt=0)
    lr_per_task: dict[str, float] = Field(
        default_factory=dict, description="ZSCL Order I: aircraft, mnist 5e-5"
    )
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.2, ge=0, lt=1)
    logit_scale: float = Field(100.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype; fp16 adds a GradScaler (CUDA only); the references train in fp32"
    )
    checkpoint_every: int = Field(100, gt=0)
    num_workers: int = Field(
        0, ge=0, description="DataLoader workers decoding training, reference and replay images"
    )

    @model_validator(mode="after")
    def _accumulation_divides(self) -> TrainConfig:
        if self.batch_size % self.accumulate:
            raise ConfigError(
                "train.accumulate",
                f"{self.accumulate} does not divide batch_size {self.batch_size}",
                "a divisor of train.batch_size (equal micro-batches)",
            )
        return self


class EvalConfig(Strict):
    batch_size: int = Field(256, gt=0)
    task_agnostic: Literal["off", "union", "per_dataset"] = Field(
        "off",
        description="off: task id known (MTIL); union: no task id, argmax over the classes of all datasets "
        "(ZSCL's task-agnostic MTIL); per_dataset: no task id, the dataset's own classes (seed 002)",
    )


class ContinualConfig(Strict):
    kind: Literal["continual"]
    seed: int = 42
    backbone: str = Field("micro-clip", description="a CLIP name from `madapt list backbones`")
    pretrained: str | None = Field(
        None,
        description="local weights file or cached open_clip tag; 'random' for a "
        "random init (micro-clip: the bundled weights when unset)",
    )
    data_root: str | None = Field(None, description="folder with the real datasets (collections mtil, cil)")
    data: DataConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    methods: list[SerializeAsAny[MethodConfig]] = Field(..., min_length=1)
    workers: int = Field(
        1,
        ge=1,
        description="methods run side by side in this many processes "
        "(ignored under accelerate launch: there all processes train one method)",
    )
    threads: int | None = Field(None, ge=1, description="torch threads per process (default: torch's)")

    @field_validator("backbone")
    @classmethod
    def _clip_backbone(cls, value: str) -> str:
        clips = names("clip")
        if value not in clips:
            other = (
                " is a backbone of another kind (not CLIP)"
                if value in names("backbone")
                else " is not a backbone"
            )
            raise ConfigError(
                "backbone",
                f"'{value}'{other}" + closest(value, clips),
                "a CLIP backbone: " + ", ".join(clips),
            )
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _method_configs(cls, value: Any) -> list[MethodConfig]:
        if not isinstance(value, list):
            raise ConfigError("methods", f"found {type(value).__name__}", "a list of {name: ..., <options>}")
        return [_method_config(i, item) for i, item in enumerate(value)]

    @model_validator(mode="after")
    def _consistent(self) -> ContinualConfig:
        keys = [m.key for m in self.methods]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise ConfigError(
                    f"methods.{i}",
                    f"'{key}' appears twice",
                    "each entry once (one sub-folder each): give repeats of a method a label",
                )
        if self.data.cil is not None:
            return self._check_cil()
        if not self.data.order:
            raise ConfigError("data.order", "is empty", "datasets in training order (or data.cil for CIL)")
        known = [n.split("/", 1)[1] for n in names("dataset") if n.startswith(f"{self.data.collection}/")]
        for i, name in enumerate(self.data.order):
            if name not in known:
                raise ConfigError(
                    f"data.order.{i}",
                    f"unknown {self.data.collection} dataset '{name}'" + closest(name, known),
                    "one of: " + ", ".join(sorted(known)),
                )
        if self.data.collection == "mtil" and not self.data_root:
            raise ConfigError(
                "data_root", "is missing", "the folder holding the MTIL datasets (data_root=DIR)"
            )
        return self

    def _check_cil(self) -> ContinualConfig:
        from madapt.data.cil import CIL_SETTINGS

        valid = [*CIL_SETTINGS, "micro/<steps>"]
        setting = self.data.cil
        micro = setting.startswith("micro/") and setting.split("/", 1)[1].isdigit()
        if not micro and setting not in CIL_SETTINGS:
            raise ConfigError(
                "data.cil",
                f"unknown setting '{setting}'" + closest(setting, CIL_SETTINGS),
                "one of: " + ", ".join(valid),
            )
        if micro != (self.data.collection == "micro") or (not micro and self.data.collection != "cil"):
            raise ConfigError(
                "data.collection",
                f"'{self.data.collection}' does not fit data.cil '{setting}'",
                "collection micro for micro/<steps>, cil for cifar100/* and tinyimagenet/*",
            )
        if not micro and not self.data_root:
            raise ConfigError(
                "data_root", "is missing", "the folder holding the CIL datasets (data_root=DIR)"
            )
        return self


def _method_config(i: int, item: Any) -> MethodConfig:
    """One entry of ``methods``: a name, or a mapping validated by that method's own Config."""
    item = {"name": item} if isinstance(item, str) else item
    if isinstance(item, MethodConfig):
        return item
    if not isinstance(item, dict) or "name" not in item:
        raise ConfigError(f"methods.{i}", f"found {item!r}", "a method name or {name: ..., <options>}")
    method = get("method", str(item["name"]))
    try:
        return method.Config.model_validate(item)
    except ConfigError:
        raise
    except Exception as err:  # pydantic.ValidationError -> one line naming the field
        first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
        loc = ".".join(str(p) for p in first["loc"])
        hint = closest(str(first["loc"][-1]), method.Config.model_fields) if first["loc"] else ""
        raise ConfigError(
            f"methods.{i}.{loc}", first["msg"] + hint, "options: " + ", ".join(method.Config.model_fields)
        ) from None
