"""Label mapping for visual prompting (seed 000, ch. 6): which source class stands for each target class.

- `costs`: streaming per-class statistics (`CostAccumulator`) and the OTLM / frequency costs;
- `solvers`: cost matrix -> one-to-one mapping (exact assignment, POT, ILM-VP greedy);
- `mappers`: `HardCoded`, `RandomMap`, `FLM`, `ILM`, `OTLM` (registered under kind "mapper"),
  each with a pydantic ``Config``; `Identity` for the new-head references (not a user choice).
"""

from madapt.labelmap.costs import (
    CostAccumulator,
    MappingStats,
    accumulate,
    frequency_cost_from_counts,
    frequency_matrix,
    ot_cost,
    ot_cost_from_sums,
)
from madapt.labelmap.mappers import FLM, ILM, OTLM, HardCoded, Identity, LabelMapper, RandomMap, mapper_config
from madapt.labelmap.solvers import mapping_cost, solve

__all__ = [
    "FLM",
    "ILM",
    "OTLM",
    "CostAccumulator",
    "HardCoded",
    "Identity",
    "LabelMapper",
    "MappingStats",
    "RandomMap",
    "accumulate",
    "frequency_cost_from_counts",
    "frequency_matrix",
    "mapper_config",
    "mapping_cost",
    "ot_cost",
    "ot_cost_from_sums",
    "solve",
]
