"""Continual methods for CLIP, one file each, registered under kind "method".

Each class has a ``Config`` (pydantic, fields documented with their seed section) and implements
the `madapt.continual.engine.ContinualMethod` protocol.
"""

from madapt.continual.methods import (  # noqa: F401  (registration)
    awof,
    condu,
    finetune,
    icarl,
    lwf,
    mm_moe,
    moe_adapters,
    rail,
    task_arithmetic,
    wise_ft,
    zeroshot,
    zscl,
)
