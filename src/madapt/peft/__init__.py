"""Parameter-efficient adaptation of frozen classifiers (seed 000 ch. 6).

- `visual_prompt`: the padding prompt of the VP framework (and the prompt-free input of FF/LP);
- `vpt`: VPT-deep prompt tokens for timm Vision Transformers, pretrained head kept.
"""

from madapt.peft.visual_prompt import PaddingPrompt, PlainInput, trainable_names
from madapt.peft.vpt import VPTDeep

__all__ = ["PaddingPrompt", "PlainInput", "VPTDeep", "trainable_names"]
