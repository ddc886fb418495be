"""The training loop of recipe ``kind: visual_prompt`` for one variant (seed 000 ch. 6, eq. 6.2).

The prompt (or the FF / LP head) is trained with cross-entropy on the mapped logits
F_LM(M(h(x))) while the backbone stays frozen. Each epoch:

1. if the mapper is due (``needs_refresh``), the mapping is recomputed before the epoch, either by
   an extra no-grad pass over the training set with the current prompt (``extra_pass``, ILM-VP's
   ``generate_label_mapping_by_frequency``) or from the softmax outputs of the previous epoch's
   training passes (``train_pass``; the very first mapping always needs one pass);
2. one pass over the shuffled training set (order from the run seed and the epoch);
3. with ``selection: best_val``, accuracy on the validation split; the trainable tensors and the
   mapping of the best epoch so far are kept. Test images are read twice, after training: at the
   final state and at the best-validation state; nothing is ever selected on test.

Device and precision: the loop runs on ``Runtime.device`` (CUDA when present), under autocast for
``bf16`` / ``fp16`` (a GradScaler for fp16, as ILM-VP's AMP training), with channels-last inputs for
convolutional backbones on CUDA; at fp32 on a CPU no autocast context is entered at all, so CPU
results are those of a plain loop. Under ``accelerate launch`` every process takes its contiguous
share of each batch and of each evaluation / mapping pass, gradients are averaged with
`Processes.mean_grads` (the loss is scaled so the average is the full batch's mean), mapping
statistics are summed over processes, and only the main process writes checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from madapt.labelmap import CostAccumulator, LabelMapper
from madapt.runs import Checkpointer, rng_state, set_rng_state
from madapt.training import Processes

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where and how the loop computes (resolved once per run from the config)."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    workers: int = 0
    pin_memory: bool = False
    procs: Processes = dataclasses.field(default_factory=Processes)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def put(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=self.pin_memory)


class Learner(nn.Module):
    """input adapter (prompt or plain input) -> network; keeps a frozen network in eval mode."""

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

    def trained_numel(self) -> int:
        """Values that training changes: the prompt's frame, VPT tokens, or the FF / LP weights."""
        return self.adapter.trained_numel() + sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold: trainable tensors, plus every buffer when fine-tuning."""
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        return {
            k: v.detach().cpu().clone()
            for k, v in self.state_dict().items()
            if k in keep or (self.finetune and k.startswith("net."))
        }


def batches(dataset: Any, index: np.ndarray, batch_size: int, rt: Runtime) -> Iterator[tuple[Any, Any, int]]:
    """``(x, y, n)`` batches over ``dataset[index]`` in order: this process's share of each batch
    of ``batch_size`` and the size ``n`` of the whole batch. In-memory arrays skip the DataLoader."""
    chunks = [index[start : start + batch_size] for start in range(0, len(index), batch_size)]
    mine = [chunk[list(rt.procs.shard(len(chunk)))] for chunk in chunks]
    if hasattr(dataset, "batch"):
        for chunk, part in zip(chunks, mine):
            x, y = dataset.batch(torch.as_tensor(part, dtype=torch.long))
            yield *rt.put(x, y), len(chunk)
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[p.tolist() for p in mine],
        num_workers=rt.workers,
        pin_memory=rt.pin_memory and rt.device.type == "cuda",
    )
    for chunk, (x, y) in zip(chunks, loader):
        yield *rt.put(x, y), len(chunk)


def all_reduce(acc: CostAccumulator, procs: Processes) -> CostAccumulator:
    """Sum a mapping pass's statistics over the processes (each saw its share of the images)."""
    if procs.world > 1:
        acc.all_reduce()
    return acc


@torch.no_grad()
def mapping_pass(
    learner: Learner,
    mapper: LabelMapper,
    dataset: Any,
    index: np.ndarray,
    n_source: int,
    n_target: int,
    batch_size: int,
    rt: Runtime,
) -> None:
    """The extra pass of ILM-VP: source softmax outputs of the training set with the current prompt."""
    learner.eval()
    acc = mapper.make_accumulator(n_source, n_target, device=rt.device)
    for x, y, _ in batches(dataset, index, batch_size, rt):
        with rt.autocast():
            logits = learner(x).float()
        acc.update(torch.softmax(logits, 1), y)
    mapper.fit_from_stats(all_reduce(acc, rt.procs))


@torch.no_grad()
def class_mean_logits(
    learner: Learner, dataset: Any, index: np.ndarray, n_target: int, batch_size: int, rt: Runtime
) -> torch.Tensor:
    """(n_target, n_source) average source logits of each target class (Figure 6.5), on CPU."""
    learner.eval()
    sums: torch.Tensor | None = None
    counts = torch.zeros(n_target, dtype=torch.float64, device=rt.device)
    for x, y, _ in batches(dataset, index, batch_size, rt):
        with rt.autocast():
            logits = learner(x).double()
        sums = logits.new_zeros(n_target, logits.shape[1]) if sums is None else sums
        sums.index_add_(0, y, logits)
        counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    if rt.procs.world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return (sums / counts.clamp(min=1)[:, None]).float().cpu()


@torch.no_grad()
def evaluate(learner: Learner, mapper: LabelMapper, dataset: Any, batch_size: int, rt: Runtime) -> float:
    """Top-1 accuracy (%) of the mapped logits on ``dataset`` (each process scores its share)."""
    learner.eval()
    index = np.arange(len(dataset))[list(rt.procs.shard(len(dataset)))]
    correct = total = 0
    for x, y, _ in batches(dataset, index, batch_size, dataclasses.replace(rt, procs=Processes())):
        with rt.autocast():
            out = mapper.transform(learner(x))
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    correct, total = rt.procs.sum([correct, total])
    return 100.0 * correct / max(total, 1)


@dataclass
class Plan:
    """Everything one variant's loop needs besides the learner and the mapper."""

    data: Any  # vp.TargetData
    index: np.ndarray  # training images of this variant (after shots_fraction)
    n_source: int  # outputs of the network the mapper reads (the new head's for FF / LP)
    n_target: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    mapping_source: str  # extra_pass | train_pass
    select_on_val: bool
    seed: int


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def train_variant(
    learner: Learner,
    mapper: LabelMapper,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    plan: Plan,
    rt: Runtime,
    checkpoints: Checkpointer | None = None,
) -> dict[str, Any]:
    """Train (resuming from ``checkpoints``), select the reported epoch on validation, test.

    Returns the results fields of the training: history, accuracies, selected epoch, mapping.
    """
    data, index = plan.data, plan.index
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    history: list[dict[str, float]] = []
    best: dict[str, Any] | None = None  # {"epoch", "val", "learner", "mapper"}
    start = 0
    rt.procs.barrier()  # no process reads a checkpoint the main one may be replacing
    ckpt = checkpoints.load() if checkpoints else None
    if ckpt is not None:
        s = ckpt.state
        learner.load_state_dict(s["learner"], strict=False)
        optimizer.load_state_dict(s["optimizer"])
        scheduler.load_state_dict(s["scheduler"])
        scaler.load_state_dict(s["scaler"])
        mapper.load_state_dict(s["mapper"])
        set_rng_state(s["rng"])
        start, history, best = int(ckpt.unit["epoch"]), list(s["history"]), s["best"]
    elif mapper.requires_data:
        mapping_pass(
            learner, mapper, data.train, index, plan.n_source, plan.n_target, plan.eval_batch_size, rt
        )
    else:
        mapper.fit_shape(plan.n_source, plan.n_target)
    # the mapping before any training: FLM vs OTLM at the first epoch (Figure 6.5)
    initial = s["initial_mapping"] if ckpt is not None else np.asarray(mapper.mapping_).tolist()
    acc = mapper.make_accumulator(plan.n_source, plan.n_target, rt.device) if mapper.requires_data else None
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    for epoch in range(start, plan.epochs):
        began = time.perf_counter()
        refresh = acc is not None and epoch + 1 < plan.epochs and mapper.needs_refresh(epoch + 1)
        collect = refresh and plan.mapping_source == "train_pass"
        learner.train()
        order = torch.randperm(
            len(index), generator=torch.Generator().manual_seed(plan.seed * 100003 + epoch)
        )
        loss_sum = 0.0
        for x, y, n in batches(data.train, index[order.numpy()], plan.batch_size, rt):
            with rt.autocast():
                logits = learner(x)
                mapped = mapper.transform(logits).float()
                if rt.procs.world == 1:
                    loss = F.cross_entropy(mapped, y)
                else:  # shard sums over n images: after mean_grads, the gradient of the batch mean
                    loss = F.cross_entropy(mapped, y, reduction="sum") * (rt.procs.world / n)
            if collect:
                acc.update(torch.softmax(logits.detach().float(), 1), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            rt.procs.mean_grads(trainable)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += float(loss.detach()) * (len(y) if rt.procs.world == 1 else n / rt.procs.world)
        if collect:
            mapper.fit_from_stats(all_reduce(acc, rt.procs))
            acc.reset()
        elif refresh:
            mapping_pass(
                learner, mapper, data.train, index, plan.n_source, plan.n_target, plan.eval_batch_size, rt
            )
        seconds = time.perf_counter() - began
        record = {"loss": rt.procs.sum([loss_sum])[0] / len(index), "seconds": seconds}
        if plan.select_on_val:
            record["val_accuracy"] = evaluate(learner, mapper, data.val, plan.eval_batch_size, rt)
            if best is None or record["val_accuracy"] > best["val"]:
                best = {
                    "epoch": epoch + 1,
                    "val": record["val_accuracy"],
                    "learner": learner.trainable_state(),
                    "mapper": mapper.state_dict(),
                }
        history.append(record)
        if checkpoints is not None and rt.procs.is_main:
            checkpoints.save(
                {"epoch": epoch + 1},
                _cpu(
                    {
                        "learner": learner.trainable_state(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "mapper": mapper.state_dict(),
                        "rng": rng_state(),
                        "history": history,
                        "best": best,
                        "initial_mapping": initial,
                    }
                ),
            )
    return _test(learner, mapper, plan, rt, history, best, initial)


def _test(
    learner: Learner,
    mapper: LabelMapper,
    plan: Plan,
    rt: Runtime,
    history: list[dict[str, float]],
    best: dict[str, Any] | None,
    initial: Any,
) -> dict[str, Any]:
    """Test accuracy at the final state, then at the best-validation state (restored last)."""
    final = evaluate(learner, mapper, plan.data.test, plan.eval_batch_size, rt)
    out: dict[str, Any] = {
        "final_accuracy": final,
        "history": history,
        "initial_mapping": initial,
        "selection": "best_val" if best is not None else "final",
    }
    if best is None or best["epoch"] == len(history):
        return {
            **out,
            "accuracy": final,
            "best_epoch": len(history) if best else None,
            "best_val_accuracy": None if best is None else best["val"],
        }
    learner.load_state_dict(best["learner"], strict=False)
    mapper.load_state_dict(best["mapper"])
    accuracy = evaluate(learner, mapper, plan.data.test, plan.eval_batch_size, rt)
    return {**out, "accuracy": accuracy, "best_epoch": best["epoch"], "best_val_accuracy": best["val"]}
