"""Assembling a continual run's tasks and reference data from its config (the data half of the recipe).

Three collections: the generated micro world (MTIL-micro, CIL-micro), the 11 real MTIL datasets
under ``data_root`` (full or few-shot), and real class-incremental CIFAR-100 / TinyImageNet.
Reference data for distillation (ZSCL, AwoF) is an image folder plus a caption file on real data
(ZSCL: ImageNet/train + Conceptual Captions for MTIL, Conceptual Captions images and captions for
CIL) and generated captioned images in the micro world.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from madapt.continual.config import ContinualConfig
from madapt.continual.tasks import ArrayDataset, StepView, Task


@dataclass
class Reference:
    """Reference data for distillation: image dataset (with ``batch`` for speed) and captions."""

    images: Any
    captions: list[str]
    vocabulary: list[str]


def build_tasks(cfg: ContinualConfig, backbone) -> tuple[list[Task], Reference | None]:
    """The tasks in training order and the reference data (None when the config names none)."""
    if cfg.data.cil:
        return _cil_tasks(cfg, backbone)
    if cfg.data.collection == "micro":
        return _micro_tasks(cfg, backbone)
    return _mtil_tasks(cfg, backbone)


def _micro_reference(cfg: ContinualConfig, backbone) -> Reference:
    from madapt.data import synthetic

    images, captions = next(synthetic.pretraining_batches(cfg.seed + 1, cfg.data.reference_size))
    return Reference(
        ArrayDataset(images, np.zeros(len(images), dtype=np.int64), backbone.mean, backbone.std),
        sorted(set(captions)),
        synthetic.vocabulary_words(),
    )


def _micro_tasks(cfg: ContinualConfig, backbone) -> tuple[list[Task], Reference]:
    from madapt.data import synthetic

    domains = synthetic.micro_domains()
    tasks, offset = [], 0
    for name in cfg.data.order:
        spec = domains[name]
        train = synthetic.make_split(name, "train", cfg.data.train_size, cfg.seed)
        test = synthetic.make_split(name, "test", cfg.data.test_size, cfg.seed)
        train_set = ArrayDataset(*train, backbone.mean, backbone.std)
        if cfg.data.shots:
            train_set = take(train_set, _few_shot(train_set.labels.tolist(), cfg.data.shots, cfg.seed, name))
        tasks.append(
            Task(
                name,
                list(spec.classnames),
                list(spec.templates),
                train_set,
                ArrayDataset(*test, backbone.mean, backbone.std),
                class_offset=offset,
            )
        )
        offset += spec.n_classes
    return tasks, _micro_reference(cfg, backbone)


def _reference_folder(cfg: ContinualConfig, backbone) -> Reference | None:
    from madapt.data.reference import ReferenceImages, read_captions

    if not (cfg.data.reference_images and cfg.data.reference_captions):
        return None
    captions = read_captions(cfg.data.reference_captions)
    return Reference(
        ReferenceImages(cfg.data.reference_images, backbone.preprocess_val),
        captions,
        sorted({w for c in captions for w in c.lower().split()}),
    )


def _mtil_tasks(cfg: ContinualConfig, backbone) -> tuple[list[Task], Reference | None]:
    from madapt.data import mtil
    from madapt.data.fewshot import labels_of

    tasks, offset = [], 0
    for name in cfg.data.order:
        spec = mtil.spec_of(f"mtil/{name}")
        train = spec.load(cfg.data_root, "train", backbone.preprocess_train)
        train_eval = spec.load(cfg.data_root, "train", backbone.preprocess_val)
        test = spec.load(cfg.data_root, "test", backbone.preprocess_val)
        if cfg.data.shots:
            keep = _few_shot(labels_of(train), cfg.data.shots, cfg.seed, spec.name)
            train, train_eval = take(train, keep), take(train_eval, keep)
        classnames = spec.classnames or mtil.class_names(spec.name, cfg.data_root)
        tasks.append(
            Task(name, classnames, spec.templates, train, test, class_offset=offset, train_eval=train_eval)
        )
        offset += len(classnames)
    return tasks, _reference_folder(cfg, backbone)


def _cil_tasks(cfg: ContinualConfig, backbone) -> tuple[list[Task], Reference | None]:
    """Class-incremental steps: one `Task` per step, labels local to the step (seed 000 §3.5.1.1).

    As ZSCL's CIL code, the distilled "current task" images are the step's training images with
    the training transforms (its LwF reads the training loader), so ``train_eval`` stays unset.
    """
    setting = cfg.data.cil
    if setting.startswith("micro/"):
        from madapt.data import synthetic

        spec = synthetic.micro_domains()[synthetic.CIL_MICRO]
        steps = synthetic.cil_micro_steps(int(setting.split("/")[1]), seed=1993)
        train = ArrayDataset(
            *synthetic.make_split(spec.name, "train", cfg.data.train_size, cfg.seed),
            backbone.mean,
            backbone.std,
        )
        test = ArrayDataset(
            *synthetic.make_split(spec.name, "test", cfg.data.test_size, cfg.seed),
            backbone.mean,
            backbone.std,
        )
        classnames, templates = list(spec.classnames), list(spec.templates)
        reference = _micro_reference(cfg, backbone)
    else:
        from madapt.data import mtil
        from madapt.data.cil import cil_protocol

        name = "cil/" + setting.split("/")[0]
        spec = mtil.spec_of(name)
        steps = cil_protocol(setting)
        train = spec.load(cfg.data_root, "train", backbone.preprocess_train)
        test = spec.load(cfg.data_root, "test", backbone.preprocess_val)
        classnames = spec.classnames or mtil.class_names(name, cfg.data_root)
        templates, reference = spec.templates, _reference_folder(cfg, backbone)
    train_labels, test_labels = _labels(train), _labels(test)
    tasks, offset = [], 0
    for k, classes in enumerate(steps):
        tasks.append(
            Task(
                f"step{k + 1}",
                [classnames[c] for c in classes],
                templates,
                _subset(train, train_labels, classes),
                _subset(test, test_labels, classes),
                class_offset=offset,
            )
        )
        offset += len(classes)
    return tasks, reference


def _few_shot(labels: list[int], shots: int, seed: int, name: str) -> list[int]:
    from madapt.data.fewshot import few_shot_indices

    return few_shot_indices(labels, shots, seed, name)


def _labels(dataset) -> list[int]:
    from madapt.data.fewshot import labels_of

    labels = getattr(dataset, "labels", None)
    return [int(y) for y in labels] if labels is not None else labels_of(dataset)


def take(dataset, indices: list[int]):
    """The items ``indices`` of ``dataset``; in-memory arrays stay arrays (vectorised batches)."""
    if isinstance(dataset, ArrayDataset):
        view = ArrayDataset.__new__(ArrayDataset)
        idx = torch.as_tensor(indices, dtype=torch.long)
        view.images, view.labels, view.mean, view.std = (
            dataset.images[idx],
            dataset.labels[idx],
            dataset.mean,
            dataset.std,
        )
        return view
    return torch.utils.data.Subset(dataset, indices)


def _subset(dataset, labels: list[int], classes: list[int]):
    """A step's view, relabelled 0..len(classes)-1; in-memory micro arrays stay arrays."""
    if isinstance(dataset, ArrayDataset):
        local = {c: i for i, c in enumerate(classes)}
        view = take(dataset, [i for i, y in enumerate(labels) if y in local])
        view.labels = torch.as_tensor([local[int(y)] for y in view.labels], dtype=torch.long)
        return view
    return StepView(dataset, labels, classes)
