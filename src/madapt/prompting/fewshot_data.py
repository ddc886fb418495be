"""Data of ``kind: fewshot``: micro few-shot tasks or the 11 CoOp datasets, K shots per class per seed.

- ``collection: micro``: `madapt.data.fewshot_micro` (generated lists, no augmentation).
- ``collection: coop``: `madapt.data.coop.load_coop` under ``data_root`` (CoOp's split files and
  layouts, Dassl's draw of K train and min(K, 4) val shots per class and seed). Training images
  get Dassl's CoOp transform (``random_resized_crop`` with scale (0.08, 1), ``random_flip``,
  bicubic, CLIP mean/std: CoOp ``configs/trainers/*/vit_b16*.yaml`` and Dassl ``INPUT`` defaults);
  evaluation uses the backbone's Resize + CenterCrop, which is Dassl's test transform.
  ``coop_cache: true`` takes the shots from CoOp's ``split_fewshot/shot_{K}-seed_{S}.pkl`` next to
  the dataset, so numbers compare with runs of the CoOp code.

The indices of every (dataset, seed) are written to ``<run>/<dataset>/shots_seed<S>.json`` the first
time and win over sampling afterwards, so a resumed or re-reported run trains on the same shots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from torchvision import transforms

from madapt.config import Strict
from madapt.data import fewshot_micro
from madapt.errors import ConfigError, closest
from madapt.runs import RunFolder, atomic_write_json
from madapt.training import join_processes


class DataConfig(Strict):
    collection: Literal["micro", "coop"] = Field(
        "micro", description="micro world tasks, or CoOp's 11 datasets"
    )
    datasets: list[str] = Field(
        ...,
        min_length=1,
        description="micro: "
        + ", ".join(fewshot_micro.MICRO_FEWSHOT)
        + "; coop: imagenet, caltech101, oxford_pets, ... (`madapt data check coop`)",
    )
    shots: int = Field(16, ge=1, description="K images per class (seed 003 §4.1: 16)")
    coop_cache: bool = Field(False, description="coop: read the shots from CoOp's shot_K-seed_S.pkl caches")
    train_per_class: int = Field(
        48, ge=1, description="micro: size per class of the list shots are drawn from"
    )
    val_per_class: int = Field(8, ge=1, description="micro: size per class of the full validation list")
    test_size: int = Field(600, ge=1, description="micro: generated test images")

    @model_validator(mode="after")
    def _micro_names(self) -> DataConfig:
        # CoOp names are checked by the loader in `prepare`, before anything is written
        for i, name in enumerate(self.datasets if self.collection == "micro" else []):
            if name not in fewshot_micro.MICRO_FEWSHOT:
                raise ConfigError(
                    f"data.datasets.{i}",
                    f"unknown micro dataset '{name}'" + closest(name, fewshot_micro.MICRO_FEWSHOT),
                    "one of: " + ", ".join(fewshot_micro.MICRO_FEWSHOT),
                )
        if self.coop_cache and self.collection != "coop":
            raise ConfigError("data.coop_cache", "is true for the micro collection", "collection coop")
        return self


def dassl_train_transform(backbone: Any) -> transforms.Compose:
    """CoOp's training transform.

    Random resized crop (0.08-1, bicubic), horizontal flip, CLIP normalisation.
    """
    bicubic = transforms.InterpolationMode.BICUBIC
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(backbone.image_size, scale=(0.08, 1.0), interpolation=bicubic),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(backbone.mean, backbone.std),
        ]
    )


@dataclass
class FewShotData:
    """Everything `splits` needs: the collection, the data root and what was loaded up front."""

    cfg: DataConfig
    data_root: str | None
    backbone: Any
    loaded: dict[tuple[str, int], Any]  # (dataset, seed) -> FewShotSplits (coop); dataset -> pool (micro)

    def splits(self, dataset: str, seed: int, folder: RunFolder) -> Any:
        """The K-shot splits of (dataset, seed); indices written to the run folder once, re-read after."""
        path = folder.path / dataset / f"shots_seed{seed}.json"
        indices = json.loads(path.read_text()) if path.is_file() else None
        b = self.backbone
        if self.cfg.collection == "micro":
            out = fewshot_micro.sample_micro(
                self.loaded[dataset, 0], self.cfg.shots, seed, b.mean, b.std, indices
            )
        elif indices is None or indices == self.loaded[dataset, seed].indices:
            out = self.loaded[dataset, seed]
        else:
            out = _load_coop(self, dataset, seed, indices)
        if indices is None and join_processes().is_main:
            atomic_write_json(path, out.indices)
        return out


def _load_coop(data: FewShotData, dataset: str, seed: int, indices: dict[str, list[int]] | None) -> Any:
    from madapt.data import coop

    b = data.backbone
    return coop.load_coop(
        dataset, data.data_root, data.cfg.shots, seed, dassl_train_transform(b), b.preprocess_val, indices
    )


def load_data(cfg: DataConfig, data_root: str | None, backbone: Any, seeds: list[int]) -> FewShotData:
    """Generate the micro lists, or read every CoOp (dataset, seed) now.

    Missing data fails before any write.
    """
    data = FewShotData(cfg, data_root, backbone, {})
    if cfg.collection == "micro":
        for name in cfg.datasets:
            data.loaded[name, 0] = fewshot_micro.micro_pool(
                name, cfg.train_per_class, cfg.val_per_class, cfg.test_size
            )
        return data
    if data_root is None:
        raise ConfigError(
            "data_root",
            "is missing for collection coop",
            "the folder holding CoOp's datasets (data_root=DIR; see `madapt data check coop`)",
        )
    from madapt.data import coop

    for name in cfg.datasets:
        for seed in seeds:
            splits = _load_coop(data, name, seed, None)
            if cfg.coop_cache:
                folder = Path(data_root) / coop.specs.spec_of(name).folder / "split_fewshot"
                cached = coop.read_coop_cache(folder / f"shot_{cfg.shots}-seed_{seed}.pkl", splits)
                splits = _load_coop(data, name, seed, cached)
            data.loaded[name, seed] = splits
    return data
