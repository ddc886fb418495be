"""Label mappers for visual prompting (seed 000, ch. 6): sklearn-style fit / mapping_ / transform.

    mapper = OTLM().fit(source_probs, target_labels)     # (N, n_source) softmax, (N,) labels
    target_logits = mapper.transform(source_logits)       # == source_logits[:, mapper.mapping_]

``mapping_[j]`` is the source class read for target class ``j`` (all distinct), so the mapped
logits have one column per target class in target order (the index vector I of §6.4.3). With
``sources_per_class: k > 1`` (AutoVP's ``out_map_num``) ``mapping_`` is (n_target, k) and target
``j``'s logit is the mean of its k source logits, as AutoVP's ``Output_Mapping`` averages them.

Each mapper's options are one pydantic ``Config`` (fields documented with their source), validated
once: `mapper_config(name, options, where)` turns a typo into a `ConfigError` naming the closest
option. `Identity` is the mapper of the FF / LP references (a new head over the target classes
already gives target logits), so a training loop never has to ask whether a mapper exists.

Mappers that learn from data (FLM, ILM, OTLM) only need per-class sums of the source outputs;
a training loop can build them with a `CostAccumulator` during its own forward passes and call
`fit_from_stats(accumulator)` instead of making an extra pass. `needs_refresh(epoch)` says when a
new mapping is due: FLM maps once before training, ILM and OTLM every ``mapping_interval`` epochs
(ILM-VP's ``epoch % mapping_interval == 0``, so also at epoch 0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
from pydantic import Field, ValidationError

from madapt.config import Strict
from madapt.errors import ConfigError, DataError, closest
from madapt.labelmap.costs import (
    DEFAULT_BATCH_SIZE,
    CostAccumulator,
    MappingStats,
    accumulate,
    frequency_cost_from_counts,
    ot_cost_from_sums,
)
from madapt.labelmap.solvers import mapping_cost, solve
from madapt.registry import get, register

COSTS = {
    "ot": lambda stats: ot_cost_from_sums(stats.prob_sums),  # eq. 6.10
    "frequency": lambda stats: frequency_cost_from_counts(stats.counts),  # §6.4.4, C_f = max(A) - A
}
SOURCES_PER_CLASS = Field(
    1,
    ge=1,
    description="source classes per target class, logits averaged "
    "(AutoVP's out_map_num: 1, 5 or 10); 1 in the thesis",
)


class NoOptions(Strict):
    """Mappers without options (hard-coded, identity)."""


class RandomConfig(Strict):
    seed: int | None = Field(None, description="seed of the draw; None: the run's seed (§6.1, Prom-PATE)")


class FLMConfig(Strict):
    sources_per_class: int = SOURCES_PER_CLASS


class ILMConfig(Strict):
    mapping_interval: int = Field(1, ge=1, description="epochs between refreshes (ILM-VP: 1)")
    sources_per_class: int = SOURCES_PER_CLASS


class OTLMConfig(Strict):
    solver: Literal["lsa", "greedy", "emd", "partial"] = Field(
        "lsa", description="eq. 6.11: exact assignment (lsa, = emd, partial); greedy is ILM-VP's (Table 6.9)"
    )
    cost: Literal["ot", "frequency"] = Field(
        "ot", description="eq. 6.10 (ot) or §6.4.4 (frequency), Table 6.9"
    )
    mapping_interval: int | None = Field(1, ge=1, description="epochs between refreshes; None: map once")
    sources_per_class: int = SOURCES_PER_CLASS


def mapper_config(name: str, options: dict[str, Any] | Strict | None, where: str) -> Strict:
    """The validated ``Config`` of mapper ``name``; a `ConfigError` at ``where`` naming the bad option."""
    cls = get("mapper", name)  # an unknown name is an UnknownNameError with the closest name
    return validate_options(cls.Config, options, where)


def validate_options(config: type[Strict], options: dict[str, Any] | Strict | None, where: str) -> Strict:
    if isinstance(options, config):
        return options
    try:
        return config.model_validate(dict(options or {}))
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        hint = ""
        if first["type"] == "extra_forbidden":
            hint = closest(key, config.model_fields)
        elif first["type"] == "literal_error":
            hint = closest(str(first["input"]), get_args(config.model_fields[key].annotation))
        valid = ", ".join(config.model_fields) or "none"
        raise ConfigError(
            f"{where}.{key}" if key else where, first["msg"] + hint, f"options: {valid}"
        ) from None


class LabelMapper(ABC):
    """Shared fit/transform plumbing; subclasses set how ``mapping_`` is chosen.

    ``LabelMapper(config)`` takes a validated ``Config``; ``LabelMapper(**options)`` validates
    the options first. ``run_seed`` is the run's seed, used by mappers that draw at random.
    """

    name = "mapper"
    Config: ClassVar[type[Strict]] = NoOptions
    requires_data = True  # False: the mapping ignores the source outputs (hard-coded, random)
    mapping_interval: int | None = None

    def __init__(self, config: Strict | None = None, /, run_seed: int = 0, **options: Any) -> None:
        if config is not None and options:
            raise ConfigError(f"label mapping '{self.name}'", "both a Config and options", "one of the two")
        self.config = validate_options(
            self.Config, options if config is None else config, f"label mapping '{self.name}'"
        )
        self.run_seed = int(run_seed)
        self.mapping_: np.ndarray | None = None
        self.n_source_: int | None = None
        self.mapping_cost_: float | None = None  # ⟨C, T⟩ under the mapper's own cost
        self.ot_cost_: float | None = None  # ⟨C_ot, T⟩ under eq. 6.10, comparable across mappers

    @property
    def per_target(self) -> int:
        return int(getattr(self.config, "sources_per_class", 1))

    # -- fitting -------------------------------------------------------------------------------
    def fit(
        self,
        source_probs: torch.Tensor | np.ndarray,
        target_labels: torch.Tensor | np.ndarray,
        n_target: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> LabelMapper:
        """Fit on (N, n_source) softmax outputs and (N,) target labels; returns ``self``.

        ``n_target`` defaults to ``max(label) + 1``; pass it when some class may be absent.
        """
        probs, labels = torch.as_tensor(source_probs), torch.as_tensor(target_labels)
        if n_target is None and labels.numel() == 0:
            raise DataError("label mapping target_labels", "no labels", "at least one labelled sample")
        n_target = int(labels.max()) + 1 if n_target is None else int(n_target)
        if probs.ndim != 2:
            raise DataError(
                f"label mapping '{self.name}' source_probs",
                f"shape {tuple(probs.shape)}",
                "a 2-D (n_samples, n_source) matrix of softmax outputs",
            )
        self._check_sizes(probs.shape[1], n_target)
        if not self.requires_data:
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_target):
                raise DataError(
                    f"label mapping '{self.name}' target_labels",
                    f"values in [{int(labels.min())}, {int(labels.max())}]",
                    f"class indices in [0, {n_target - 1}] (n_target={n_target})",
                )
            return self.fit_shape(probs.shape[1], n_target)
        return self.fit_from_stats(accumulate(probs, labels, n_target, batch_size, counts=self.needs_counts))

    def fit_shape(self, n_source: int, n_target: int) -> LabelMapper:
        """Fit from the class counts alone (mappers with ``requires_data = False``)."""
        empty = np.zeros((int(n_source), int(n_target)))
        return self.fit_from_stats(MappingStats(prob_sums=empty, counts=empty.astype(np.int64), n_samples=0))

    @property
    def needs_counts(self) -> bool:
        """Whether fitting uses the argmax counts (else an accumulator may skip them)."""
        return False

    def make_accumulator(
        self, n_source: int, n_target: int, device: str | torch.device = "cpu"
    ) -> CostAccumulator:
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
        if stats.n_samples:
            self.ot_cost_ = mapping_cost(ot_cost_from_sums(stats.prob_sums), self.mapping_)
        return self

    def _check_sizes(self, n_source: int, n_target: int) -> None:
        k = self.per_target
        if n_target * k > n_source:
            found = f"{n_target} target classes but only {n_source} source classes"
            expected = "n_target <= n_source for a one-to-one mapping"
            if k > 1:
                found, expected = (
                    f"{k} sources for each of {found}",
                    "n_target * sources_per_class <= n_source",
                )
            raise ConfigError(f"label mapping '{self.name}'", found, expected)

    @abstractmethod
    def _choose(self, stats: MappingStats) -> np.ndarray:
        """The mapping ((n_target,) or (n_target, k) distinct source indices) for these statistics."""

    def needs_refresh(self, epoch: int) -> bool:
        """True when the mapping must be (re)computed before training epoch ``epoch`` (0-based)."""
        if self.mapping_ is None:
            return True
        return self.mapping_interval is not None and epoch % self.mapping_interval == 0

    # -- applying ------------------------------------------------------------------------------
    def transform(self, source_logits: torch.Tensor) -> torch.Tensor:
        """(..., n_source) source logits -> (..., n_target) logits, column j = source mapping_[j]
        (the mean over target j's sources when it has several)."""
        if self.mapping_ is None:
            raise RuntimeError(f"{type(self).__name__}.transform called before fit")
        if source_logits.shape[-1] != self.n_source_:
            raise DataError(
                f"label mapping '{self.name}' source_logits",
                f"shape {tuple(source_logits.shape)}",
                f"last dimension {self.n_source_} (the source classes seen at fit)",
            )
        index = torch.as_tensor(self.mapping_, device=source_logits.device)
        if index.ndim == 1:
            return source_logits.index_select(-1, index)
        picked = source_logits.index_select(-1, index.reshape(-1))
        return picked.unflatten(-1, tuple(index.shape)).mean(-1)

    def describe(self, source_names: list[str]) -> dict[str, Any]:
        """Results entry of the mapping: source indices, their names and both average costs."""
        n_target = len(self.mapping_)
        rows = np.asarray(self.mapping_).reshape(n_target, -1)
        return {
            "mapping": self.mapping_.tolist(),
            "mapped_names": [" + ".join(source_names[i] for i in row) for row in rows],
            "mapping_cost": None if self.mapping_cost_ is None else self.mapping_cost_ / n_target,
            "ot_cost": None if self.ot_cost_ is None else self.ot_cost_ / n_target,
        }

    # -- checkpointing (JSON-friendly) ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        mapping = None if self.mapping_ is None else np.asarray(self.mapping_).tolist()
        return {
            "name": self.name,
            "n_source": self.n_source_,
            "mapping": mapping,
            "mapping_cost": self.mapping_cost_,
            "ot_cost": self.ot_cost_,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ConfigError(
                "label mapping state",
                f"saved by mapper '{state.get('name')}'",
                f"a state saved by '{self.name}'",
            )
        mapping = state["mapping"]
        self.mapping_ = None if mapping is None else np.asarray(mapping, dtype=np.int64)
        self.n_source_ = state["n_source"]
        self.mapping_cost_, self.ot_cost_ = state.get("mapping_cost"), state.get("ot_cost")


class Identity(LabelMapper):
    """Target logits are the model's own logits: the FF / LP references' new head (§6.5.1.2)."""

    name = "identity"
    requires_data = False

    def _check_sizes(self, n_source: int, n_target: int) -> None:
        if n_source != n_target:
            raise ConfigError(
                "label mapping 'identity'",
                f"{n_source} outputs for {n_target} target classes",
                "a head with one output per target class",
            )

    def _choose(self, stats: MappingStats) -> np.ndarray:
        return np.arange(stats.n_target, dtype=np.int64)

    def transform(self, source_logits: torch.Tensor) -> torch.Tensor:
        return source_logits

    def describe(self, source_names: list[str]) -> dict[str, Any]:
        return {}  # no label mapping to report


@register("mapper", "hardcoded")
class HardCoded(LabelMapper):
    """Original VP mapping (Bahng et al. 2022, §6.1): target class i reads source logit i
    (their ``indices = list(range(len(class_names)))``)."""

    name = "hardcoded"
    requires_data = False

    def _choose(self, stats: MappingStats) -> np.ndarray:
        return np.arange(stats.n_target, dtype=np.int64)


@register("mapper", "random")
class RandomMap(LabelMapper):
    """Random injective mapping (Prom-PATE style, §6.1), drawn from ``config.seed`` or the run seed."""

    name = "random"
    Config = RandomConfig
    requires_data = False

    def _choose(self, stats: MappingStats) -> np.ndarray:
        seed = self.run_seed if self.config.seed is None else self.config.seed
        rng = np.random.default_rng(seed)
        return rng.choice(stats.n_source, size=stats.n_target, replace=False).astype(np.int64)


class CostMapper(LabelMapper):
    """A mapping chosen by minimising a cost built from the source outputs (FLM, ILM, OTLM)."""

    cost: str = "frequency"
    solver: str = "greedy"

    def __init__(self, config: Strict | None = None, /, run_seed: int = 0, **options: Any) -> None:
        super().__init__(config, run_seed=run_seed, **options)
        self.cost = getattr(self.config, "cost", type(self).cost)
        self.solver = getattr(self.config, "solver", type(self).solver)
        self.mapping_interval = getattr(self.config, "mapping_interval", type(self).mapping_interval)
        self.cost_: np.ndarray | None = None

    @property
    def needs_counts(self) -> bool:
        return self.cost == "frequency"

    def _choose(self, stats: MappingStats) -> np.ndarray:
        if self.needs_counts and stats.counts is None:
            raise ConfigError(
                f"label mapping '{self.name}'",
                "statistics without argmax counts",
                "an accumulator built with counts=True (see make_accumulator)",
            )
        cost = COSTS[self.cost](stats)
        mapping = solve(cost, self.solver, self.per_target)
        # Kept for reports: the average cost of Figure 6.3 is mapping_cost_ / n_target.
        self.cost_, self.mapping_cost_ = cost, mapping_cost(cost, mapping)
        return mapping


@register("mapper", "flm")
class FLM(CostMapper):
    """Frequency label mapping (ILM-VP): argmax counts, greedy one-to-one, computed once (§6.4.4)."""

    name = "flm"
    Config = FLMConfig


@register("mapper", "ilm")
class ILM(CostMapper):
    """Iterative label mapping (ILM-VP): FLM recomputed every ``mapping_interval`` epochs."""

    name = "ilm"
    Config = ILMConfig


@register("mapper", "otlm")
class OTLM(CostMapper):
    """Optimal-transport label mapping (§6.4): cost of eq. 6.10, exact assignment of eq. 6.11.

    ``cost`` ("ot" | "frequency") and ``solver`` ("lsa" | "greedy" | "emd" | "partial") give the
    2 × 2 ablation of Table 6.9: greedy/frequency is ILM, lsa/ot is OTLM. ``mapping_interval=None``
    maps once before training.
    """

    name = "otlm"
    Config = OTLMConfig
