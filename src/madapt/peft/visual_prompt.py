"""Input-side prompts for visual prompting: the padding prompt h(x, θ_p) of eq. 6.1 (seed 000 §6.3.1).

The target image (a float tensor in [0, 1], any size) is resized to ``input − 2·pad`` and placed in
the middle of a canvas of the backbone's input size; the ``pad``-pixel border around it is the
learned prompt. Normalisation uses the backbone's own mean/std (timm's data config).

Two parameterisations of the border, matching the two public recipes:

- ``space="normalized"`` (Bahng et al.'s PadPrompter, the VP framework of the thesis): the border
  values are the parameters themselves, in normalised space, initialised at 0;
- ``space="pixel"`` (ILM-VP's expansive prompt): the border is ``sigmoid(θ)`` in [0, 1] pixel space
  and is normalised with the image, so it starts as a mid-grey frame.

In both cases the centre of the prompted input equals the resized, normalised image exactly.
`PlainInput` is the prompt-free counterpart (resize to the full input + normalise) used by the
full fine-tuning and linear probing references.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from madapt.errors import ConfigError


def _stats(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, 3, 1, 1)


class PlainInput(nn.Module):
    """No prompt: resize to the backbone's input size and normalise (references FF and LP)."""

    def __init__(self, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.register_buffer("mean", _stats(mean), persistent=False)
        self.register_buffer("std", _stats(std), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.resize(x, self.input_size))


class PaddingPrompt(PlainInput):
    """Padding prompt: a learned ``pad``-pixel frame around the resized image (eq. 6.1).

    Only ``self.prompt`` (shape 1 × 3 × H × W, used on the frame only) is a parameter.
    """

    def __init__(self, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 pad: int, space: Literal["normalized", "pixel"] = "normalized") -> None:
        super().__init__(input_size, mean, std)
        h, w = self.input_size
        if not 0 < 2 * pad < min(h, w):
            raise ConfigError("prompt.pad", f"{pad} for a {h}x{w} input",
                              f"a border width with 0 < 2*pad < {min(h, w)}")
        if space not in ("normalized", "pixel"):
            raise ConfigError("prompt.space", repr(space), "'normalized' or 'pixel'")
        self.pad, self.space = int(pad), space
        self.inner = (h - 2 * pad, w - 2 * pad)
        self.prompt = nn.Parameter(torch.zeros(1, 3, h, w))
        mask = torch.ones(1, 1, h, w)
        mask[..., pad:h - pad, pad:w - pad] = 0.0
        self.register_buffer("mask", mask, persistent=False)

    def frame(self) -> torch.Tensor:
        """The border as added to the normalised input (zeros at the centre)."""
        if self.space == "pixel":
            return self.mask * self.normalise(torch.sigmoid(self.prompt))
        return self.mask * self.prompt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        image = self.normalise(self.resize(x, self.inner))
        # zero padding in normalised space, then the frame fills the border
        return F.pad(image, (p, p, p, p)) + self.frame()


def trainable_names(module: nn.Module) -> list[str]:
    """Names of the parameters that will train (for reports and tests)."""
    return [n for n, p in module.named_parameters() if p.requires_grad]
