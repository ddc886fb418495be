"""Parameter-efficient adaptation of frozen classifiers (seed 000 ch. 6).

- `visual_prompt`: the padding prompt of the VP framework (and the prompt-free input of FF/LP);
- `vpt`: VPT-deep prompt tokens for timm ViT and Swin Transformers, pretrained head kept
  (`build_vpt_deep` picks the variant for a backbone).
"""

from madapt.peft.visual_prompt import PaddingPrompt, PlainInput, trainable_names
from madapt.peft.vpt import VPTDeep, VPTDeepSwin, build_vpt_deep, supports_vpt_deep

__all__ = ["PaddingPrompt", "PlainInput", "VPTDeep", "VPTDeepSwin", "build_vpt_deep", "supports_vpt_deep",
           "trainable_names"]
