"""Helpers shared by the continual tests: build a method from its Config as the recipe does."""

from __future__ import annotations

import madapt.continual.methods  # noqa: F401  (registers the methods)
from madapt.registry import get

# small-batch options so the tiny tasks run in seconds
SMALL = {
    "icarl": {"replay_batch_size": 4, "memory_size": 30},
    "zscl": {"average_every": 1, "reference_batch_size": 4},
    "lwf": {"reference_batch_size": 4},
    "lwf_vr": {"reference_batch_size": 4, "sentences": 8},
}


def build(name: str, **options):
    """A registered method built from its validated Config, as the recipe does."""
    cls = get("method", name)
    return cls(cls.Config.model_validate({"name": name, **SMALL.get(name, {}), **options}))
