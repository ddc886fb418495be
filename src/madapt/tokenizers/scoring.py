"""ADAT's per-piece LM loss, momentum, balance function and pruning (seed 000 §5.3.2, eqs. 5.3-5.5).

Conventions fixed here (the thesis leaves them implicit):

* ``a`` is the Unigram removal loss of a piece (eq. 5.2, `madapt.tokenizers.unigram.removal_loss`),
  larger = more useful; ``b`` is the accumulated LM cross-entropy of the piece (eq. 5.3), a
  *sum* over occurrences, larger = harder for the model. Higher score = keep.
* Balance functions (Table 5.5): ``ratio`` a / (λ·log(b+1)) (the paper's choice), ``diff``
  a − λb and ``logdiff`` log(a) − λb. The prose of §5.4.6.4 names the second subtraction
  "a − λ log(b)" while Table 5.5 prints "log(a) − λb"; we follow the table.
* Momentum (eq. 5.5) is L^j_mom = β·L^{j−1}_mom + L^j with no (1−β) factor. In §5.3.2.2 the
  symbol L^j(x_i) is the combined loss of eq. 5.4, so the momentum is meant for the *score*;
  `momentum` works on any per-piece array, keyed by piece string across rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from madapt.errors import ConfigError

Balance = Literal["ratio", "diff", "logdiff"]
BALANCES: tuple[str, ...] = ("ratio", "diff", "logdiff")


class LossAccumulator:
    """Eq. 5.3: for every piece, the sum of its next-token cross-entropy over all occurrences.

    Call `update` once per batch; ``total`` holds the sums, ``count`` the occurrences, so the
    mean is available too (the paper uses the sum).
    """

    def __init__(self, vocab_size: int, device: torch.device | str = "cpu") -> None:
        self.total = torch.zeros(vocab_size, dtype=torch.float64, device=device)
        self.count = torch.zeros(vocab_size, dtype=torch.int64, device=device)

    def update(self, ce: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add per-position CE values ``ce`` [B, T] of predicting ``targets`` [B, T].

        ``mask`` [B, T] is True where a position counts (False on padding).
        """
        if ce.shape != targets.shape:
            raise ValueError(f"ce {tuple(ce.shape)} and targets {tuple(targets.shape)} differ in shape")
        ce, targets = ce.reshape(-1), targets.reshape(-1)
        if mask is not None:
            keep = mask.reshape(-1).to(torch.bool)
            ce, targets = ce[keep], targets[keep]
        self.total.index_add_(0, targets, ce.detach().to(self.total.dtype))
        self.count.index_add_(0, targets, torch.ones_like(targets, dtype=self.count.dtype))

    def update_from_logits(
        self, logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> None:
        """Score a causal-LM forward pass: position t predicts ``input_ids[:, t + 1]``."""
        targets = input_ids[:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2).float(), targets, reduction="none"
        )
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
        self.update(ce, targets, mask)

    def mean(self) -> torch.Tensor:
        """Mean CE per piece (NaN for pieces never seen)."""
        return self.total / self.count.to(self.total.dtype)


def momentum(prev: np.ndarray | None, cur: np.ndarray, beta: float) -> np.ndarray:
    """Eq. 5.5: β·prev + cur (the first round, ``prev=None``, returns ``cur``)."""
    cur = np.asarray(cur, dtype=np.float64)
    return cur.copy() if prev is None else beta * np.asarray(prev, dtype=np.float64) + cur


def carry_over(prev: Mapping[str, float], pieces: Sequence[str]) -> np.ndarray:
    """Previous round's values aligned to this round's pieces (ids shift after pruning).

    Pieces new to this round (never the case when only pruning) start at 0.
    """
    return np.array([prev.get(p, 0.0) for p in pieces], dtype=np.float64)


def adat_score(a: np.ndarray, b: np.ndarray, balance: Balance = "ratio", lam: float = 1.0) -> np.ndarray:
    """Eq. 5.4 with the balance functions of Table 5.5; higher score = keep.

    ``ratio``: a / (λ·log(b+1)); a piece the LM never saw (b = 0) gets +inf when a > 0 (no LM
    evidence against it) and 0 when a = 0. ``logdiff``: log(a) − λb, with log(a ≤ 0) = −inf.
    Note ``ratio`` assumes a > 0: for a negative a a larger b *raises* the score.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if balance == "ratio":
        denom = lam * np.log1p(b)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = a / denom
        return np.where(denom == 0, np.where(a > 0, np.inf, np.where(a < 0, -np.inf, 0.0)), score)
    if balance == "diff":
        return a - lam * b
    if balance == "logdiff":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, np.log(np.where(a > 0, a, 1.0)), -np.inf) - lam * b
    raise ConfigError("adat.balance", f"'{balance}'", f"one of {', '.join(BALANCES)}")


def prune(pieces: Sequence[str], scores: np.ndarray, n_remove: int, required_mask: np.ndarray) -> np.ndarray:
    """Boolean keep-mask removing the ``n_remove`` lowest-scoring pieces that are not required.

    Ties are broken towards removing the later id (sentencepiece orders ids by score). Required
    pieces (special, byte and single-character pieces) are never removed, so every string stays
    encodable.
    """
    scores = np.asarray(scores, dtype=np.float64)
    required = np.asarray(required_mask, dtype=bool)
    if not (len(pieces) == len(scores) == len(required)):
        raise ValueError("pieces, scores and required_mask must have the same length")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    removable = np.flatnonzero(~required)
    if not 0 <= n_remove <= len(removable):
        raise ConfigError(
            "adat.schedule", f"{n_remove} pieces to remove", f"at most {len(removable)} removable pieces"
        )
    order = removable[np.lexsort((-removable, scores[removable]))]
    keep = np.ones(len(pieces), dtype=bool)
    keep[order[:n_remove]] = False
    return keep
