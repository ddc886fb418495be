"""Label mappers for visual prompting (seed 000, ch. 6): sklearn-style fit / mapping_ / transform.

    mapper = OTLM().fit(source_probs, target_labels)     # (N, n_source) softmax, (N,) labels
    target_logits = mapper.transform(source_logits)       # == source_logits[:, mapper.mapping_]

``mapping_[j]`` is the source class read for target class ``j`` (all distinct), so the mapped
logits have one column per target class in target order (the index vector I of §6.4.3).

Mappers that learn from data (FLM, ILM, OTLM) only need per-class sums of the source outputs;
a training loop can build them with a `CostAccumulator` during its own forward passes and call
`fit_from_stats(accumulator)` instead of making an extra pass. `needs_refresh(epoch)` says when a
new mapping is due: FLM maps once before training, ILM and OTLM every ``mapping_interval`` epochs
(ILM-VP's ``epoch % mapping_interval == 0``, so also at epoch 0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from madapt.errors import ConfigError, DataError, closest
from madapt.labelmap.costs import (
    DEFAULT_BATCH_SIZE,
    CostAccumulator,
    MappingStats,
    accumulate,
    frequency_cost_from_counts,
    ot_cost_from_sums,
)
from madapt.labelmap.solvers import check_solver_name, mapping_cost, solve
from madapt.registry import register

COSTS = {
    "ot": lambda stats: ot_cost_from_sums(stats.prob_sums),  # eq. 6.10
    "frequency": lambda stats: frequency_cost_from_counts(stats.counts),  # §6.4.4, C_f = max(A) - A
}


def _n_target(labels: torch.Tensor, n_target: int | None) -> int:
    if n_target is not None:
        return int(n_target)
    if labels.numel() == 0:
        raise DataError("label mapping target_labels", "no labels", "at least one labelled sample")
    return int(labels.max()) + 1


class LabelMapper(ABC):
    """Shared fit/transform plumbing; subclasses set how ``mapping_`` is chosen."""

    name = "mapper"
    requires_data = True  # False: the mapping ignores the source outputs (hard-coded, random)
    mapping_interval: int | None = None

    def __init__(self) -> None:
        self.mapping_: np.ndarray | None = None
        self.n_source_: int | None = None

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, source_probs: torch.Tensor | np.ndarray, target_labels: torch.Tensor | np.ndarray,
            n_target: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> LabelMapper:
        """Fit on (N, n_source) softmax outputs and (N,) target labels; returns ``self``.

        ``n_target`` defaults to ``max(label) + 1``; pass it when some class may be absent.
        """
        probs, labels = torch.as_tensor(source_probs), torch.as_tensor(target_labels)
        n_target = _n_target(labels, n_target)
        if probs.ndim != 2:
            raise DataError(f"label mapping '{self.name}' source_probs", f"shape {tuple(probs.shape)}",
                            "a 2-D (n_samples, n_source) matrix of softmax outputs")
        self._check_sizes(probs.shape[1], n_target)
        if not self.requires_data:
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_target):
                raise DataError(f"label mapping '{self.name}' target_labels",
                                f"values in [{int(labels.min())}, {int(labels.max())}]",
                                f"class indices in [0, {n_target - 1}] (n_target={n_target})")
            return self.fit_from_stats(_shape_only(probs.shape[1], n_target))
        return self.fit_from_stats(accumulate(probs, labels, n_target, batch_size, counts=self.needs_counts))

    @property
    def needs_counts(self) -> bool:
        """Whether fitting uses the argmax counts (else an accumulator may skip them)."""
        return False

    def make_accumulator(self, n_source: int, n_target: int,
                         device: str | torch.device = "cpu") -> CostAccumulator:
        """An accumulator gathering exactly what this mapper needs (for mapping during training)."""
        self._check_sizes(n_source, n_target)
        return CostAccumulator(n_source, n_target, device=device, counts=self.needs_counts)

    def fit_from_stats(self, stats: MappingStats | CostAccumulator) -> LabelMapper:
        """Fit from statistics gathered elsewhere (e.g. during training forward passes)."""
        if isinstance(stats, CostAccumulator):
            stats = stats.stats()
        self._check_sizes(stats.n_source, stats.n_target)
        self.mapping_ = self._choose(stats)
        self.n_source_ = stats.n_source
        return self

    def _check_sizes(self, n_source: int, n_target: int) -> None:
        if n_target > n_source:
            raise ConfigError(f"label mapping '{self.name}'",
                              f"{n_target} target classes but only {n_source} source classes",
                              "n_target <= n_source for a one-to-one mapping")

    @abstractmethod
    def _choose(self, stats: MappingStats) -> np.ndarray:
        """The mapping (length n_target, distinct source indices) for these statistics."""

    def needs_refresh(self, epoch: int) -> bool:
        """True when the mapping must be (re)computed before training epoch ``epoch`` (0-based)."""
        if self.mapping_ is None:
            return True
        return self.mapping_interval is not None and epoch % self.mapping_interval == 0

    # -- applying ------------------------------------------------------------------------------
    def transform(self, source_logits: torch.Tensor) -> torch.Tensor:
        """(..., n_source) source logits -> (..., n_target) logits, column j = source mapping_[j]."""
        if self.mapping_ is None:
            raise RuntimeError(f"{type(self).__name__}.transform called before fit")
        if source_logits.shape[-1] != self.n_source_:
            raise DataError(f"label mapping '{self.name}' source_logits",
                            f"shape {tuple(source_logits.shape)}",
                            f"last dimension {self.n_source_} (the source classes seen at fit)")
        index = torch.as_tensor(self.mapping_, device=source_logits.device)
        return source_logits.index_select(-1, index)

    # -- checkpointing (JSON-friendly) ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        mapping = None if self.mapping_ is None else [int(i) for i in self.mapping_]
        return {"name": self.name, "n_source": self.n_source_, "mapping": mapping}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ConfigError("label mapping state", f"saved by mapper '{state.get('name')}'",
                              f"a state saved by '{self.name}'")
        mapping = state["mapping"]
        self.mapping_ = None if mapping is None else np.asarray(mapping, dtype=np.int64)
        self.n_source_ = state["n_source"]


@register("mapper", "hardcoded")
class HardCoded(LabelMapper):
    """Original VP mapping (Bahng et al. 2022, §6.1): target class i reads source logit i."""

    name = "hardcoded"
    requires_data = False

    def _choose(self, stats: MappingStats) -> np.ndarray:
        return np.arange(stats.n_target, dtype=np.int64)

    def fit_shape(self, n_source: int, n_target: int) -> HardCoded:
        """Fit from the class counts alone (no source outputs needed)."""
        return self.fit_from_stats(_shape_only(n_source, n_target))


@register("mapper", "random")
class RandomMap(LabelMapper):
    """Random injective mapping (Prom-PATE style, §6.1), reproducible from ``seed``."""

    name = "random"
    requires_data = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)

    def _choose(self, stats: MappingStats) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.choice(stats.n_source, size=stats.n_target, replace=False).astype(np.int64)

    def fit_shape(self, n_source: int, n_target: int) -> RandomMap:
        """Fit from the class counts alone (no source outputs needed)."""
        return self.fit_from_stats(_shape_only(n_source, n_target))


def _shape_only(n_source: int, n_target: int) -> MappingStats:
    empty = np.zeros((int(n_source), int(n_target)))
    return MappingStats(prob_sums=empty, counts=empty.astype(np.int64), n_samples=0)


class CostMapper(LabelMapper):
    """A mapping chosen by minimising a cost built from the source outputs (FLM, ILM, OTLM)."""

    def __init__(self, cost: str, solver: str, mapping_interval: int | None) -> None:
        super().__init__()
        if cost not in COSTS:
            raise ConfigError(f"label mapping '{self.name}' cost", f"'{cost}'" + closest(cost, COSTS),
                              "one of: " + ", ".join(COSTS))
        if mapping_interval is not None and (not isinstance(mapping_interval, int) or mapping_interval < 1):
            raise ConfigError(f"label mapping '{self.name}' mapping_interval", repr(mapping_interval),
                              "a positive number of epochs, or None to map once before training")
        self.cost, self.solver = cost, check_solver_name(solver)
        self.mapping_interval = mapping_interval
        self.cost_: np.ndarray | None = None
        self.mapping_cost_: float | None = None

    @property
    def needs_counts(self) -> bool:
        return self.cost == "frequency"

    def _choose(self, stats: MappingStats) -> np.ndarray:
        if self.needs_counts and stats.counts is None:
            raise ConfigError(f"label mapping '{self.name}'", "statistics without argmax counts",
                              "an accumulator built with counts=True (see make_accumulator)")
        cost = COSTS[self.cost](stats)
        mapping = solve(cost, self.solver)
        # Kept for reports: the average cost of Figure 6.3 is mapping_cost_ / n_target.
        self.cost_, self.mapping_cost_ = cost, mapping_cost(cost, mapping)
        return mapping


@register("mapper", "flm")
class FLM(CostMapper):
    """Frequency label mapping (ILM-VP): argmax counts, greedy one-to-one, computed once (§6.4.4)."""

    name = "flm"

    def __init__(self) -> None:
        super().__init__(cost="frequency", solver="greedy", mapping_interval=None)


@register("mapper", "ilm")
class ILM(CostMapper):
    """Iterative label mapping (ILM-VP): FLM recomputed every ``mapping_interval`` epochs."""

    name = "ilm"

    def __init__(self, mapping_interval: int = 1) -> None:
        super().__init__(cost="frequency", solver="greedy", mapping_interval=mapping_interval)


@register("mapper", "otlm")
class OTLM(CostMapper):
    """Optimal-transport label mapping (§6.4): cost of eq. 6.10, exact assignment of eq. 6.11.

    ``cost`` ("ot" | "frequency") and ``solver`` ("lsa" | "greedy" | "emd" | "partial") give the
    2 × 2 ablation of Table 6.9: greedy/frequency is ILM, lsa/ot is OTLM. ``mapping_interval=None``
    maps once before training.
    """

    name = "otlm"

    def __init__(self, solver: str = "lsa", cost: str = "ot", mapping_interval: int | None = 1) -> None:
        super().__init__(cost=cost, solver=solver, mapping_interval=mapping_interval)
