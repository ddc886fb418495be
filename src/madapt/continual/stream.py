"""Deterministic data streams: every batch is a pure function of (seed, task, step).

That is what makes a killed run resume to the same result: the engine and the methods never hold
an iterator whose position would have to be saved. Datasets with a vectorised ``batch(indices)``
(the in-memory micro world) are gathered directly; others go through a `DataLoader` whose workers
decode images in parallel, with a batch sampler planned from the step the stream starts at.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from madapt.continual.context import TrainSettings
from madapt.training import Processes


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of batch ``step``: consecutive slices of per-epoch permutations (a pure function)."""
    start = step * batch_size
    out: list[int] = []
    epoch, offset = divmod(start, n)
    while len(out) < batch_size:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(int(i) for i in take)
        epoch, offset = epoch + 1, 0
    return out


class SeededItems(Dataset):
    """Wraps a dataset so item (index, seed) draws its augmentation from its own seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def planned_batches(
    dataset: Dataset, plan: Iterator[tuple[int, Sequence[int]]], seed: int, num_workers: int
) -> Iterator[Any]:
    """The batches of ``plan`` ((step, indices) pairs), decoded by ``num_workers`` DataLoader workers.

    Item k of the batch of step s draws its augmentation from its own seed (a function of seed, s,
    k), so the result depends neither on the number of workers nor on where the stream started.
    """
    if hasattr(dataset, "batch") and num_workers == 0:
        for _, indices in plan:
            yield dataset.batch(list(indices))
        return
    keyed = (
        [(int(i), (seed * 1_000_003 + step) * 7_919 + k) for k, i in enumerate(indices)]
        for step, indices in plan
    )
    yield from DataLoader(SeededItems(dataset), batch_sampler=keyed, num_workers=num_workers)


def train_batches(
    dataset: Dataset, settings: TrainSettings, task: int, start: int, processes: Processes = Processes()
) -> Iterator[Any]:
    """Batches ``start..iterations-1`` of ``task``; identical whatever step the run resumes at.

    With several processes each yields its slice of the global batch; an item's augmentation seed
    is its position in the global batch, so the union of the slices is the single-process batch.
    """
    n = len(dataset)  # type: ignore[arg-type]
    stream_seed = settings.seed * 1_000_003 + task
    mine = processes.shard(settings.batch_size)
    if hasattr(dataset, "batch") and settings.num_workers == 0:
        for step in range(start, settings.iterations[task]):
            indices = batch_indices(n, settings.batch_size, step, stream_seed)
            yield dataset.batch([indices[k] for k in mine])
        return
    sampler = (
        [
            (i, stream_seed * 7_919 + step * settings.batch_size + k)
            for k, i in enumerate(batch_indices(n, settings.batch_size, step, stream_seed))
            if k in mine
        ]
        for step in range(start, settings.iterations[task])
    )
    yield from DataLoader(SeededItems(dataset), batch_sampler=sampler, num_workers=settings.num_workers)


def micro_batches(batch: tuple[torch.Tensor, ...], k: int) -> list[tuple[torch.Tensor, ...]]:
    """``batch`` cut into ``k`` equal consecutive micro-batches (gradient accumulation)."""
    size = len(batch[0])
    if size % k:
        raise ValueError(f"a batch of {size} does not split into {k} equal micro-batches")
    step = size // k
    return [tuple(t[i * step : (i + 1) * step] for t in batch) for i in range(k)]


def eval_batches(
    dataset: Dataset, batch_size: int, num_workers: int, processes: Processes = Processes()
) -> Iterator[Any]:
    """This process's contiguous shard of ``dataset`` in order, ``batch_size`` items at a time."""
    mine = processes.shard(len(dataset))  # type: ignore[arg-type]
    if hasattr(dataset, "batch") and num_workers == 0:
        for start in range(mine.start, mine.stop, batch_size):
            yield dataset.batch(range(start, min(mine.stop, start + batch_size)))
        return
    yield from DataLoader(
        Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )


class BatchStream:
    """Batch ``step`` of an endless seeded stream over ``dataset`` (reference or replay images).

    `at(step)` is a pure function of (dataset, seed, step); consecutive steps reuse one DataLoader
    (its workers decode ahead), a jump (resume) restarts it at the new step, and asking for the
    same step again (micro-batches of one step) returns the batch already fetched. Items may be
    bare images or (image, label) pairs; ``images(step)`` returns the image tensor either way.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0, sequential: bool = False
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.sequential = num_workers, sequential
        self._iter: Iterator[Any] | None = None
        self._next = -1
        self._last: tuple[int, Any] | None = None

    def indices(self, step: int) -> list[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.sequential:
            # ZSCL's iCaRL replays its memory in order: consecutive chunks, the last one partial, cycling
            chunk = step % -(-n // self.batch_size)
            return list(range(chunk * self.batch_size, min(n, (chunk + 1) * self.batch_size)))
        return batch_indices(n, self.batch_size, step, self.seed)

    def at(self, step: int) -> Any:
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        if self._iter is None or step != self._next:
            plan = ((s, self.indices(s)) for s in range(step, 1 << 62))
            self._iter = planned_batches(self.dataset, plan, self.seed, self.num_workers)
        batch = next(self._iter)
        self._next, self._last = step + 1, (step, batch)
        return batch

    def images(self, step: int) -> torch.Tensor:
        batch = self.at(step)
        return batch[0] if isinstance(batch, (tuple, list)) else batch
