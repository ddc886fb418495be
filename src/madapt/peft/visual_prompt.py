"""Input-side prompts for visual prompting: h(x, θ_p) of eq. 6.1 (seed 000 §6.3.1), as the public
recipes build them. Images arrive as float tensors in [0, 1]; normalisation uses the backbone's own
mean/std (timm's data config: ImageNet statistics for ResNet-50 / Swin / ConvNeXt, 0.5 for the
augreg ViTs, as DAM-VP normalises its in21k ViT).

- `PadPrompter` — Bahng et al. 2022 (hjbahng/visual_prompting ``models/prompters.py``), the VP
  framework the thesis follows (§6.5.1.1). The image keeps its full size (the data pipeline
  resizes to 256 and centre-crops 224, one resize); it is normalised, and four learned pads,
  initialised ``randn``, are *added* over its border in normalised space: ``pad_up`` / ``pad_down``
  of 3 × pad × W and ``pad_left`` / ``pad_right`` of 3 × (H − 2·pad) × pad. Nothing is shrunk, and
  the trainable count is exactly the frame (69,840 values for pad 30 at 224).
- `ExpansivePrompt` — ILM-VP (OPTML-Group/ILM-VP ``models/visual_prompt.py``
  ``ExpansiveVisualPrompt``): the native 32 px (CIFAR, SVHN, GTSRB) or 128 px image is zero-padded
  to the input size (``l_pad = (out − in + 1) // 2``, ``r_pad = (out − in) // 2``) and
  ``sigmoid(program) · mask`` is added, the mask being 1 on the padding only; normalisation comes
  after. ``program`` is a zero-initialised 3 × out × out tensor as ILM-VP's, but only its frame
  ever receives a gradient, so `trained_numel` counts the frame.
- `PlainInput` — no prompt (FF / LP references and VPT-deep): normalise.

Each module resizes a batch only when it does not already have the size the recipe feeds it (the
in-memory micro datasets); real data arrives at the right size from the data pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from madapt.errors import ConfigError


def _stats(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, 3, 1, 1)


class PlainInput(nn.Module):
    """No prompt: (resize to ``image_size`` if needed and) normalise."""

    def __init__(self, image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.register_buffer("mean", _stats(mean), persistent=False)
        self.register_buffer("std", _stats(std), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        # the same two operations as torchvision's Normalize, so results match it bit for bit
        return (x - self.mean) / self.std

    def fit_size(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.image_size:
            return x
        return F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.fit_size(x))

    def trained_numel(self) -> int:
        """Number of values that training changes (what Table 6.11 counts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class PadPrompter(PlainInput):
    """Bahng et al.'s padding prompt: four ``randn`` pads added over the normalised image's border."""

    def __init__(
        self, image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float], pad: int
    ) -> None:
        super().__init__(image_size, mean, std)
        h, w = self.image_size
        if not 0 < 2 * pad < min(h, w):
            raise ConfigError("prompt.pad", f"{pad} for a {h}x{w} input", f"0 < 2*pad < {min(h, w)}")
        self.pad = int(pad)
        self.pad_up = nn.Parameter(torch.randn(1, 3, pad, w))
        self.pad_down = nn.Parameter(torch.randn(1, 3, pad, w))
        self.pad_left = nn.Parameter(torch.randn(1, 3, h - 2 * pad, pad))
        self.pad_right = nn.Parameter(torch.randn(1, 3, h - 2 * pad, pad))

    def frame(self) -> torch.Tensor:
        """The 1 × 3 × H × W prompt: the pads around a zero centre."""
        h, w = self.image_size
        centre = self.pad_left.new_zeros(1, 3, h - 2 * self.pad, w - 2 * self.pad)
        middle = torch.cat([self.pad_left, centre, self.pad_right], dim=3)
        return torch.cat([self.pad_up, middle, self.pad_down], dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.fit_size(x)) + self.frame()


class ExpansivePrompt(PlainInput):
    """ILM-VP's expansive prompt: the ``image_size`` image zero-padded to ``input_size``, plus
    ``sigmoid(program)`` on the padding, then normalised."""

    def __init__(
        self,
        image_size: tuple[int, int],
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(image_size, mean, std)
        (h, w), (out_h, out_w) = self.image_size, (int(input_size[0]), int(input_size[1]))
        if h != w or out_h != out_w or not 0 < h < out_h:
            raise ConfigError(
                "prompt.image_size",
                f"{h}x{w} image in a {out_h}x{out_w} input",
                "a square image smaller than the square backbone input",
            )
        self.l_pad, self.r_pad = (out_h - h + 1) // 2, (out_h - h) // 2
        self.program = nn.Parameter(torch.zeros(3, out_h, out_w))
        self.register_buffer("mask", F.pad(torch.zeros(3, h, w), self.padding, value=1.0), persistent=False)

    @property
    def padding(self) -> tuple[int, int, int, int]:
        return (self.l_pad, self.r_pad, self.l_pad, self.r_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.fit_size(x), self.padding, value=0.0) + torch.sigmoid(self.program) * self.mask
        return self.normalise(x)

    def trained_numel(self) -> int:
        return int(self.mask.sum()) if self.program.requires_grad else 0


def trainable_names(module: nn.Module) -> list[str]:
    """Names of the parameters that will train (for reports and tests)."""
    return [n for n, p in module.named_parameters() if p.requires_grad]
