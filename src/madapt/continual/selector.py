"""Task selection at test time for expert methods on MTIL: MoE-Adapters' DDAS (seed 000 §4.5.2.1).

DDAS (MoE-Adapters ``src/models/AutoEncoder.py``, ``evaluation.py``) keeps one autoencoder per
task, Linear(F→100)–ReLU–Linear(100→F)–Sigmoid trained with MSE on sigmoid(features); a test
batch goes to the task whose autoencoder reconstructs it best, or to the frozen CLIP (no experts)
when the best error exceeds a threshold or when autoencoder 0, trained on a generic domain
(TinyImageNet there), wins. Training: Adam lr 0.01, weight decay 1e-4, lr × 0.1 every 10 epochs,
300 iterations per task (1000 for autoencoder 0).

Kept deviations, with their reasons:
- features are the frozen CLIP's image embeddings (√F · unit-normalised, so sigmoid spreads them
  over (0, 1) as it does AlexNet's conv activations) instead of AlexNet conv5 features, which the
  reference downloads at run time and which do not exist for the micro world; the 0.0655 threshold
  belongs to AlexNet features, so ``threshold`` is per feature space (None: only the generic-domain
  rule rejects);
- autoencoder 0 is trained on the run's reference images (ZSCL's ImageNet / the micro world's
  pretraining-style images) when the run has them;
- features are computed once per task with the evaluation transform and batches are drawn from
  them (the reference re-augments each epoch with the mild RandomResizedCrop(0.9–1));
- the choice is per sample by default; ``per_batch`` decides per batch as the reference does
  (its batches come from one dataset, which a user's mixed stream does not guarantee).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from madapt.continual.stream import batch_indices


class SelectorConfig(BaseModel):
    hidden: int = Field(100, ge=1, description="code size of each autoencoder (DDAS: 100)")
    iterations: int = Field(300, ge=1, description="training steps per task's autoencoder (DDAS: 300)")
    reference_iterations: int = Field(1000, ge=0, description="steps of the generic-domain autoencoder 0")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    decay_every_epochs: int = Field(10, ge=1, description="lr × 0.1 every this many epochs")
    threshold: float | None = Field(
        None,
        gt=0.0,
        description="best reconstruction error above this -> frozen CLIP (DDAS: 0.0655 on AlexNet)",
    )
    per_batch: bool = Field(False, description="one decision per evaluation batch, as DDAS")


def ae_inputs(features: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(F.normalize(features.float(), dim=-1) * math.sqrt(features.shape[-1]))


class TaskSelector(nn.Module):
    """Autoencoder 0 (generic domain, optional) and one autoencoder per trained task."""

    def __init__(self, cfg: SelectorConfig, dim: int) -> None:
        super().__init__()
        self.cfg, self.dim = cfg, dim
        self.reference: nn.Module | None = None
        self.tasks = nn.ModuleList()

    def _autoencoder(self) -> nn.Module:
        h = self.cfg.hidden
        return nn.Sequential(nn.Linear(self.dim, h), nn.ReLU(), nn.Linear(h, self.dim), nn.Sigmoid())

    def fit(self, features: torch.Tensor, seed: int, reference: bool = False) -> None:
        """Train a new autoencoder on ``features`` [n, F] (a task's, or the generic domain's)."""
        with torch.random.fork_rng(devices=[]):  # nn.Linear's init, without moving the run's RNG
            torch.manual_seed(seed)
            ae = self._autoencoder().to(features.device)
        x = ae_inputs(features)
        steps = self.cfg.reference_iterations if reference else self.cfg.iterations
        opt = torch.optim.Adam(ae.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        per_epoch = math.ceil(len(x) / self.cfg.batch_size)
        with torch.enable_grad():
            for step in range(steps):
                for group in opt.param_groups:
                    group["lr"] = self.cfg.lr * 0.1 ** ((step // per_epoch) // self.cfg.decay_every_epochs)
                batch = x[batch_indices(len(x), min(self.cfg.batch_size, len(x)), step, seed)]
                loss = F.mse_loss(ae(batch), batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        ae.requires_grad_(False).eval()
        if reference:
            self.reference = ae
        else:
            self.tasks.append(ae)

    @torch.no_grad()
    def errors(self, features: torch.Tensor) -> torch.Tensor:
        """[B, n_tasks (+1)] mean squared reconstruction errors; column 0 is autoencoder 0 if any."""
        x = ae_inputs(features)
        aes = ([self.reference] if self.reference is not None else []) + list(self.tasks)
        return torch.stack([((ae(x) - x) ** 2).mean(dim=-1) for ae in aes], dim=1)

    @torch.no_grad()
    def select(self, features: torch.Tensor) -> torch.Tensor:
        """Per sample: the task index whose autoencoder wins, or -1 (frozen CLIP)."""
        if not len(self.tasks):
            return torch.full((len(features),), -1, dtype=torch.long, device=features.device)
        err = self.errors(features)
        if self.cfg.per_batch:
            err = err.mean(dim=0, keepdim=True).expand_as(err)
        best, choice = err.min(dim=1)
        offset = int(self.reference is not None)
        choice = choice - offset  # autoencoder 0 -> -1
        if self.cfg.threshold is not None:
            choice = torch.where(best > self.cfg.threshold, torch.full_like(choice, -1), choice)
        return choice

    # -- method state -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tasks": [dict(ae.state_dict()) for ae in self.tasks]}
        if self.reference is not None:
            out["reference"] = dict(self.reference.state_dict())
        return out

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        self.tasks = nn.ModuleList()
        for sd in state.get("tasks", []):
            ae = self._autoencoder().to(device)
            ae.load_state_dict(sd)
            self.tasks.append(ae.requires_grad_(False).eval())
        self.reference = None
        if "reference" in state:
            self.reference = self._autoencoder().to(device)
            self.reference.load_state_dict(state["reference"])
            self.reference.requires_grad_(False).eval()
