"""Adapt's saliency pruning of context tokens (seed 003 §3.2 eq. 6, Algorithm 1), as plain functions.

- `token_scores`: the per-token score of one minibatch. Snip |Σ_d g_d p_d| (= |∂L/∂m| for the
  token's mask m when the prompt is m·p; Lee et al. 2019), gradient norm ‖g‖₂, or ℓ2-norm ‖p‖₂.
  Eq. 6 writes |∂L/∂P ⊙ P| per token; summing over the width before the absolute value is the
  token-level SNIP (Synaptic-Flow's SNIP takes |∂L/∂mask|), the reading the anchors file gives.
- `lowest_live`: Algorithm 1 lines 17-21, the r lowest accumulated scores among live tokens of
  both towers (ties: vision before text, then layer, then slot). ``normalize: mean`` divides each
  tower's scores by the mean over its live tokens first (text is 512-d and vision 768-d on
  ViT-B/16, so raw Snip and gradient-norm scales differ per tower); the default ``none`` ranks the
  raw scores, as Algorithm 1 is written.
- `plan_schedule`: when to prune. Algorithm 1 prunes r_p = 4 tokens every n_k = 80 accumulated
  minibatches once warm-up is over. When that cannot reach T_target within the training (EuroSAT:
  16 shots x 10 classes at batch 4 = 40 iterations per epoch, 3,960 after the warm-up epoch, but
  384 - 32 tokens need 88 pruning steps = 7,040), policy ``raise_rate`` raises the rate to
  ⌈(pool - T) / events⌉ so that T is reached after a share ``reach_by`` (default 0.5, our choice)
  of the post-warm-up iterations; ``accept`` keeps the paper's rate and ends above T. The plan and
  its reason are returned (the recipe writes them into the run log and report).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

Score = Literal["snip", "grad_norm", "l2"]
Normalize = Literal["none", "mean"]
Policy = Literal["raise_rate", "accept"]


def token_scores(score: Score, prompts: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """Eq. 6 for the (n, d) prompts of one layer: one non-negative score per token (float32)."""
    p = prompts.detach().float()
    if score == "l2":
        return p.norm(dim=-1)
    g = torch.zeros_like(p) if grad is None else grad.detach().float()
    if score == "snip":
        return (g * p).sum(dim=-1).abs()
    if score == "grad_norm":
        return g.norm(dim=-1)
    raise ValueError(f"unknown score '{score}'")


def lowest_live(
    scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], k: int, normalize: Normalize = "none"
) -> list[tuple[str, int, int]]:
    """(tower, layer, slot) of the ``k`` live tokens with the lowest scores.

    ``scores`` / ``masks`` are (ℓ, ξ).
    """
    flat, where = [], []
    for tower, s in scores.items():
        live = masks[tower].bool()
        s = s.float().clone()
        if normalize == "mean" and live.any():
            mean = s[live].mean()
            s = s / mean if mean > 0 else s
        s[~live] = float("inf")  # pruned tokens are never chosen again
        flat.append(s.reshape(-1))
        layers, slots = s.shape
        where += [(tower, i, j) for i in range(layers) for j in range(slots)]
    order = torch.sort(torch.cat(flat), stable=True).indices.tolist()
    n_live = sum(int(m.sum()) for m in masks.values())
    return [where[i] for i in order[: min(k, n_live)]]


@dataclass(frozen=True)
class PruneSchedule:
    """Prune ``rate`` tokens after every ``period`` accumulated minibatches from ``start_step`` on."""

    start_step: int
    period: int
    rate: int
    events: int  # pruning steps needed to reach the target at this rate
    reaches_target: bool
    adjusted: bool
    note: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def plan_schedule(
    pool: int,
    target: int,
    start_step: int,
    total_steps: int,
    n_k: int = 80,
    r_p: int = 4,
    policy: Policy = "raise_rate",
    reach_by: float = 0.5,
) -> PruneSchedule:
    """The pruning schedule of one run (see the module docstring for the policy)."""
    need = max(pool - target, 0)
    window = max(total_steps - start_step, 0)
    if need == 0:
        return PruneSchedule(
            start_step, n_k, r_p, 0, True, False, f"T_target {target} >= pool {pool}: no pruning"
        )
    events = math.ceil(need / r_p)
    if events * n_k <= window:
        note = f"{events} pruning steps of {r_p} tokens every {n_k} iterations (Algorithm 1)"
        return PruneSchedule(start_step, n_k, r_p, events, True, False, note)
    short = f"{events * n_k} iterations needed at r_p={r_p}, n_k={n_k}, {window} after warm-up"
    if policy == "accept":
        done = window // n_k
        note = (
            f"{short}: kept the rate, ends at {pool - min(need, done * r_p)} tokens, above T_target {target}"
        )
        return PruneSchedule(start_step, n_k, r_p, events, False, False, note)
    budget = int(window * reach_by)
    if budget < 1:
        return PruneSchedule(
            start_step, n_k, r_p, events, False, False, f"{short}: no iteration left to prune in"
        )
    period = min(n_k, budget)
    slots = budget // period
    rate = math.ceil(need / slots)
    events = math.ceil(need / rate)
    note = (
        f"{short}: raised r_p to {rate} (every {period} iterations) to reach T_target {target} "
        f"within {reach_by:.0%} of the post-warm-up iterations"
    )
    return PruneSchedule(start_step, period, rate, events, True, True, note)
