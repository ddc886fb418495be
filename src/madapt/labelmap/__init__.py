"""Label mapping for visual prompting (seed 000, ch. 6): which source class stands for each target class.

- `costs`: streaming per-class statistics (`CostAccumulator`) and the OTLM / frequency costs;
- `solvers`: cost matrix -> one-to-one mapping (exact assignment, POT, ILM-VP greedy);
- `mappers`: `HardCoded`, `RandomMap`, `FLM`, `ILM`, `OTLM` (registered under kind "mapper").
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
from madapt.labelmap.mappers import FLM, ILM, OTLM, HardCoded, LabelMapper, RandomMap
from madapt.labelmap.solvers import mapping_cost, solve

__all__ = [
    "FLM",
    "ILM",
    "OTLM",
    "CostAccumulator",
    "HardCoded",
    "LabelMapper",
    "MappingStats",
    "RandomMap",
    "accumulate",
    "frequency_cost_from_counts",
    "frequency_matrix",
    "mapping_cost",
    "ot_cost",
    "ot_cost_from_sums",
    "solve",
]
