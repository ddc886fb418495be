"""Import every module that registers names, so listing and building by name sees all of them.

Registration is explicit (a decorator next to each definition); this list is the one place that
says which modules exist. Modules that need optional extras are skipped when those are missing.
"""

from __future__ import annotations

import importlib

MODULES = (
    "madapt.backbones.clip",
    "madapt.backbones.classifier",
    "madapt.backbones.causal_lm",
    "madapt.backbones.micro",
    "madapt.data.synthetic",
    "madapt.data.mtil",
    "madapt.data.cil",
    "madapt.labelmap",
    "madapt.continual.methods",
    "madapt.continual.recipe",
    "madapt.prompting.visual",
    "madapt.prompting.visual_params",
    "madapt.prompting.fewshot_recipe",
    "madapt.prompting.adapt",
    "madapt.prompting.coop",
    "madapt.prompting.cocoop",
    "madapt.prompting.kgcoop",
    "madapt.prompting.vpt_clip",
    "madapt.prompting.maple",
    "madapt.tokenizers.adat",
)


def load_all() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            # only tolerate modules of this list that do not exist yet, never a broken import inside
            if err.name is None or not name.startswith(err.name):
                raise
