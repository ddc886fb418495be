"""Parameter-efficient adaptation of frozen classifiers (seed 000 ch. 6).

- `visual_prompt`: Bahng et al.'s `PadPrompter` (the VP framework), ILM-VP's `ExpansivePrompt`
  and the prompt-free `PlainInput` of FF/LP and VPT;
- `vpt`: VPT-deep prompt tokens for timm ViT and Swin Transformers, pretrained head kept
  (`build_vpt_deep` picks the variant for a backbone).
"""

from madapt.peft.visual_prompt import ExpansivePrompt, PadPrompter, PlainInput, trainable_names
from madapt.peft.vpt import VPTDeep, VPTDeepSwin, build_vpt_deep, supports_vpt_deep

__all__ = [
    "ExpansivePrompt",
    "PadPrompter",
    "PlainInput",
    "VPTDeep",
    "VPTDeepSwin",
    "build_vpt_deep",
    "supports_vpt_deep",
    "trainable_names",
]
