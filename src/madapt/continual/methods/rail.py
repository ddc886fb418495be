"""RAIL: regression-based analytic incremental learning on a frozen CLIP (seed 002 Tables 1-3 baseline).

As RAIL's code runs it (``primal_RAIL.py``, ``dual_RAIL.py``, ``utils.py``, ``configs/analytic_clip.yaml``):
CLIP never changes; after each task the normalised training image features fit a ridge
regression onto one-hot labels over every class learned so far, in closed form:

- ``primal``: features go through a fixed random ReLU expansion (``nn.Linear(d, 15000, bias=False)``
  with torch's default init, then ReLU); W = (ΦᵀΦ + λI)⁻¹ ΦᵀY with λ = 0.1 over all tasks' data.
  The code reaches the same W by recursive least squares batch by batch; we keep ΦᵀΦ and ΦᵀY and
  solve once per task (equal up to float rounding, one solve instead of one per batch);
- ``dual``: kernel ridge regression with the Gaussian kernel exp(−γ‖x − x'‖²), γ = 0.1,
  λ = 0.001, α = (K + λI)⁻¹ Y over the stored features of every task (the code keeps them all).

Prediction (both): zero-shot CLIP with "a photo of a {}." over the class names of *every* dataset
of the sequence, softmax at scale 100; images whose zero-shot argmax falls among the learned
classes are fused: (1 − β) · softmax + β · regression output (zero for classes not learned yet),
β = 0.9. RAIL is task-agnostic by construction; with a task id the engine's label space is that
task's classes, and we return the fused scores' columns of that task (ours: RAIL's code only
evaluates over the union, so its published numbers compare with ``eval.task_agnostic: union``).
``template: null`` (ours, for the micro world) builds the zero-shot side from each dataset's own first
template instead of RAIL's one generic template.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from madapt.backbones.clip import fill_template
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.continual.stream import eval_batches
from madapt.registry import register


class RAILConfig(MethodConfig):
    name: Literal["rail"] = "rail"
    variant: Literal["primal", "dual"] = Field("primal", description="Primal-RAIL or Dual-RAIL")
    hidden: int = Field(15_000, ge=1, description="primal: width of the random ReLU expansion (hidden_dim)")
    ridge: float | None = Field(None, gt=0, description="λ; None: the code's (primal 0.1, dual 0.001)")
    gamma: float = Field(0.1, gt=0, description="dual: Gaussian kernel width γ")
    fusion_weight: float = Field(
        0.9, ge=0, le=1, description="β of the fusion with zero-shot (fusion_weight)"
    )
    template: str | None = Field(
        "a photo of a {}.",
        description="RAIL's one zero-shot template; None: each dataset's own first template "
        "(for benchmarks whose class names need their domain's words, as the micro world's)",
    )


@register("method", "rail")
class RAIL(ContinualMethod):
    Config = RAILConfig
    trains = False
    text_frozen = True

    def __init__(self, cfg: RAILConfig) -> None:
        self.cfg = cfg
        self.ridge = cfg.ridge if cfg.ridge is not None else (0.1 if cfg.variant == "primal" else 0.001)
        self.learned = 0  # classes fitted so far (a prefix of the sequence's label space)
        self.gram = self.cross = torch.zeros(0)  # primal: ΦᵀΦ and ΦᵀY
        self.features = self.labels = torch.zeros(0)  # dual: every task's features and class ids
        self.weights = torch.zeros(0)  # W (primal) or α (dual)
        self._expansion: torch.Tensor | None = None
        self._head: torch.Tensor | None = None

    def expansion(self, dim: int, ctx) -> torch.Tensor:
        """The fixed random projection (torch's Linear init: U(±1/√d)), seeded from the run seed."""
        if self._expansion is None:
            g = torch.Generator().manual_seed(ctx.settings.seed)
            bound = 1.0 / math.sqrt(dim)
            self._expansion = (torch.rand(dim, self.cfg.hidden, generator=g) * 2 - 1) * bound
        return self._expansion.to(ctx.device)

    def features_of(self, images: torch.Tensor, ctx) -> torch.Tensor:
        return F.normalize(ctx.model.encode_image(images).float(), dim=-1)

    def kernel(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.cfg.gamma * torch.cdist(x, y).square())

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        task = ctx.current
        feats, labels = [], []
        for images, y in eval_batches(task.train, ctx.settings.eval_batch_size, ctx.settings.num_workers):
            with ctx.autocast():
                feats.append(self.features_of(images.to(ctx.device), ctx))
            labels.append(y.to(ctx.device) + task.class_offset)
        x, y = torch.cat(feats).float(), torch.cat(labels)
        self.learned = task.class_offset + task.n_classes
        if self.cfg.variant == "primal":
            phi = torch.relu(x @ self.expansion(x.shape[1], ctx))
            onehot = F.one_hot(y, self.learned).to(phi.dtype)
            if not self.gram.numel():
                self.gram = torch.zeros(phi.shape[1], phi.shape[1], device=ctx.device)
                self.cross = torch.zeros(phi.shape[1], 0, device=ctx.device)
            self.gram = self.gram.to(ctx.device) + phi.T @ phi
            self.cross = (
                F.pad(self.cross.to(ctx.device), (0, self.learned - self.cross.shape[1])) + phi.T @ onehot
            )
            eye = torch.eye(self.gram.shape[0], device=ctx.device, dtype=torch.float64)
            self.weights = torch.linalg.solve(
                self.gram.double() + self.ridge * eye, self.cross.double()
            ).float()
        else:
            self.features = torch.cat([self.features.to(ctx.device), x]) if self.features.numel() else x
            self.labels = torch.cat([self.labels.to(ctx.device), y]) if self.labels.numel() else y
            onehot = F.one_hot(self.labels, self.learned).double()
            f = self.features.double()  # K is ill-conditioned at λ = 0.001: build and solve in float64
            k = self.kernel(f, f)
            eye = torch.eye(k.shape[0], device=ctx.device, dtype=k.dtype)
            self.weights = torch.linalg.solve(k + self.ridge * eye, onehot)

    def regression(self, feats: torch.Tensor, ctx) -> torch.Tensor:
        """The regressor's outputs over the learned classes."""
        if self.cfg.variant == "primal":
            return torch.relu(feats @ self.expansion(feats.shape[1], ctx)) @ self.weights.to(feats.device)
        k = self.kernel(feats.double(), self.features.to(feats.device).double())
        return (k @ self.weights.to(feats.device).double()).to(feats.dtype)

    def union_head(self, ctx) -> torch.Tensor:
        if self._head is None:
            texts = [
                fill_template(self.cfg.template or t.templates[0], n.replace("_", " "))
                for t in ctx.tasks
                for n in t.classnames
            ]
            tokens = ctx.backbone.tokenize(texts).to(ctx.device)
            with torch.no_grad():
                self._head = torch.cat(
                    [F.normalize(ctx.model.encode_text(c).float(), dim=-1) for c in tokens.split(512)]
                )
        return self._head

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        feats = self.features_of(images, ctx)
        scores = F.softmax(100.0 * feats @ self.union_head(ctx).T, dim=-1)
        if self.learned:
            fuse = scores.argmax(dim=-1) < self.learned  # zero-shot says: a learned domain
            if fuse.any():
                adapted = F.pad(self.regression(feats[fuse], ctx), (0, scores.shape[1] - self.learned))
                beta = self.cfg.fusion_weight
                scores[fuse] = (1 - beta) * scores[fuse] + beta * adapted
        if task is None:
            return scores
        spec = ctx.tasks[task]
        return scores[:, spec.class_offset : spec.class_offset + spec.n_classes]

    def state_dict(self) -> dict[str, Any]:
        return {
            "learned": self.learned,
            "gram": self.gram,
            "cross": self.cross,
            "features": self.features,
            "labels": self.labels,
            "weights": self.weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learned = int(state.get("learned", 0))
        for key in ("gram", "cross", "features", "labels", "weights"):
            value = state.get(key)
            setattr(self, key, value.clone() if isinstance(value, torch.Tensor) else torch.zeros(0))

    def summary(self, ctx) -> dict[str, Any]:
        stored = sum(
            t.numel() * t.element_size() for t in (self.gram, self.cross, self.features, self.weights)
        )
        return {
            "variant": self.cfg.variant,
            "learned_classes": self.learned,
            "stored_MB": round(stored / 2**20, 2),
        }
