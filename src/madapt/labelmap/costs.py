"""Label-mapping cost matrices, accumulated batch by batch (seed 000, §6.4.2 and §6.4.4).

Two statistics of the source model's outputs on the target training set are enough for every
mapper in this package, and both are per-(source class, target class) sums:

- ``prob_sums[i, j] = Σ_{k : y_k = j} f_{k,i}``: softmax probability of source class ``i``
  summed over the samples of target class ``j`` (the grouped summation of Figure 6.1(c));
- ``counts[i, j]``: how many samples of target class ``j`` have source class ``i`` as their
  argmax (the frequency matrix of FLM / ILM, transposed to source × target).

`CostAccumulator` adds a batch to both with ``index_add_`` (a scatter-add over target labels),
so a caller never holds an N × n_source probability matrix or an N × n_source one-hot — the
statistics take O(n_source · n_target) memory whatever N is. A training loop can feed it the
softmax outputs of its own forward passes and skip the extra pass over the data.

The OTLM cost (eq. 6.10) normalises each *source* class ``i`` by its probability mass over all
N samples, ``Σ_n f_{n,i}``, i.e. each row of ``prob_sums`` by its row sum:
``C_ij = 1 − prob_sums[i, j] / Σ_j' prob_sums[i, j']``. The frequency cost of §6.4.4 is
``C_f = max(A) − A`` with ``A`` the frequency matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from madapt.errors import DataError

# Softmax rows computed in float16/bfloat16 can be off by ~1e-3; a row further off than this is
# not a probability vector (most likely raw logits were passed).
PROB_SUM_TOLERANCE = 1e-2

DEFAULT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class MappingStats:
    """What the mappers need from the data: both matrices are (n_source, n_target) numpy arrays."""

    prob_sums: np.ndarray
    counts: np.ndarray | None  # None when the accumulator was built with counts=False
    n_samples: int

    @property
    def n_source(self) -> int:
        return int(self.prob_sums.shape[0])

    @property
    def n_target(self) -> int:
        return int(self.prob_sums.shape[1])


class CostAccumulator:
    """Streaming per-class sums of softmax outputs and argmax counts (memory O(n_source·n_target)).

    Call `update` once per batch of softmax outputs, then `stats()` at the end of the pass.
    ``counts=False`` skips the argmax counts (the OT cost does not use them; saves one pass
    over each batch).

    Precision: float32 batches are scatter-added into a float32 buffer (about 7 ms for
    1024 × 21843 on an idle 2-core CPU, against ~100 ms when converted to float64) that is
    flushed into a float64 total before it would exceed ``flush_rows`` samples, so a float32
    partial sum covers at most max(flush_rows, batch size) samples (a buffer cell sums only the
    rows of its own target class: ~30 for 16384 rows over NABirds' 555 classes, so float32 adds a
    relative error of order 1e-6); float64 batches go straight into the float64 total. Each flush
    is a pass over the float64 matrix (~50 ms at 555 x 21843), hence the large default.
    """

    def __init__(
        self,
        n_source: int,
        n_target: int,
        device: str | torch.device = "cpu",
        flush_rows: int = 16384,
        counts: bool = True,
    ) -> None:
        if n_target < 1 or n_source < 1:
            raise DataError(
                "label mapping",
                f"n_source={n_source}, n_target={n_target}",
                "at least one source and one target class",
            )
        self.n_source, self.n_target = int(n_source), int(n_target)
        self.flush_rows = int(flush_rows)
        # Target-major layout: index_add_ along dim 0 adds whole contiguous rows, and the solver
        # wants the cost as (n_target, n_source) anyway; `stats()` hands out transposed views.
        self._total = torch.zeros(self.n_target, self.n_source, dtype=torch.float64, device=device)
        self._buffer = torch.zeros(self.n_target, self.n_source, dtype=torch.float32, device=device)
        # int32 is enough for 2^31 samples and halves the copy made by `stats()`.
        self._counts = (
            torch.zeros(self.n_target * self.n_source, dtype=torch.int32, device=device) if counts else None
        )
        self._buffered_rows = 0
        self.n_samples = 0

    def reset(self) -> None:
        """Forget everything seen so far (start of a new mapping pass)."""
        self._total.zero_()
        self._buffer.zero_()
        if self._counts is not None:
            self._counts.zero_()
        self._buffered_rows = 0
        self.n_samples = 0

    @torch.no_grad()
    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``probs`` (B, n_source) softmax outputs, ``labels`` (B,) target classes."""
        probs, labels = _check_batch(probs, labels, self.n_source, self.n_target)
        device = self._total.device
        probs, labels = probs.detach().to(device), labels.to(device)
        if probs.dtype == torch.float64:
            self._total.index_add_(0, labels, probs)
        else:
            if self._buffered_rows + len(labels) > self.flush_rows:
                self._flush()
            self._buffer.index_add_(0, labels, probs.float())
            self._buffered_rows += len(labels)
        if self._counts is not None:
            flat = labels * self.n_source + probs.argmax(dim=1)
            self._counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        self.n_samples += int(labels.numel())

    def all_reduce(self) -> None:
        """Sum the statistics over the processes of torch.distributed's default group (each process
        accumulated its share of the images; afterwards every process holds the totals)."""
        import torch.distributed as dist

        self._flush()
        dist.all_reduce(self._total)
        if self._counts is not None:
            dist.all_reduce(self._counts)
        n = torch.tensor([float(self.n_samples)], dtype=torch.float64, device=self._total.device)
        dist.all_reduce(n)
        self.n_samples = int(n.item())

    def _flush(self) -> None:
        if self._buffered_rows:
            self._total.add_(self._buffer)
            self._buffer.zero_()
            self._buffered_rows = 0

    def stats(self) -> MappingStats:
        """The accumulated sums as (n_source, n_target) numpy arrays (transposed views of copies)."""
        if self.n_samples == 0:
            raise DataError(
                "label mapping",
                "no samples were accumulated",
                "at least one batch of source outputs before fitting",
            )
        # total + buffer is what a flush would leave, in one new array: no flush, no extra copy
        # (at 555 x 21843 each avoided pass over the float64 matrix is ~50-100 ms)
        prob_sums = torch.add(self._total, self._buffer).cpu().numpy().T
        counts = (
            None
            if self._counts is None
            else self._counts.view(self.n_target, self.n_source).cpu().numpy().copy().T
        )
        return MappingStats(prob_sums=prob_sums, counts=counts, n_samples=self.n_samples)


def _check_batch(
    probs: torch.Tensor, labels: torch.Tensor, n_source: int, n_target: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one batch; raise `DataError` naming what is wrong."""
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels)
    if probs.ndim != 2 or probs.shape[1] != n_source:
        raise DataError(
            "label mapping source_probs",
            f"shape {tuple(probs.shape)}",
            f"(batch, {n_source}) softmax outputs over the source classes",
        )
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise DataError(
            "label mapping target_labels",
            f"shape {tuple(labels.shape)}",
            f"({probs.shape[0]},): one target label per row of source_probs",
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError("label mapping target_labels", f"dtype {labels.dtype}", "integer class indices")
    if labels.numel() == 0:
        return probs, labels.long()
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_target:
        raise DataError(
            "label mapping target_labels",
            f"values in [{lo}, {hi}]",
            f"class indices in [0, {n_target - 1}] (n_target={n_target})",
        )
    if not probs.dtype.is_floating_point:
        raise DataError("label mapping source_probs", f"dtype {probs.dtype}", "floating-point probabilities")
    row_sums = probs.sum(dim=1)
    worst = float((row_sums - 1.0).abs().max())
    if worst > PROB_SUM_TOLERANCE or float(probs.amin()) < 0:
        raise DataError(
            "label mapping source_probs",
            f"rows summing to {float(row_sums.min()):.4g}..{float(row_sums.max()):.4g} "
            f"with minimum entry {float(probs.amin()):.4g}",
            "softmax probabilities (non-negative rows summing to 1; apply softmax to logits)",
        )
    return probs, labels.long()


def accumulate(
    source_probs: torch.Tensor | np.ndarray,
    target_labels: torch.Tensor | np.ndarray,
    n_target: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    counts: bool = True,
) -> CostAccumulator:
    """Feed an in-memory (N, n_source) probability matrix to a `CostAccumulator` in batches."""
    probs, labels = torch.as_tensor(source_probs), torch.as_tensor(target_labels)
    if probs.ndim != 2:
        raise DataError(
            "label mapping source_probs",
            f"shape {tuple(probs.shape)}",
            "a 2-D (n_samples, n_source) matrix of softmax outputs",
        )
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise DataError(
            "label mapping target_labels",
            f"shape {tuple(labels.shape)}",
            f"({probs.shape[0]},): one target label per row of source_probs",
        )
    acc = CostAccumulator(probs.shape[1], n_target, device=probs.device, counts=counts)
    for start in range(0, probs.shape[0], batch_size):
        acc.update(probs[start : start + batch_size], labels[start : start + batch_size])
    return acc


def ot_cost_from_sums(prob_sums: np.ndarray) -> np.ndarray:
    """OTLM cost (eq. 6.10) from per-class probability sums (n_source, n_target).

    ``C_ij = 1 − prob_sums[i, j] / Σ_j' prob_sums[i, j']``; the denominator is the total mass
    ``Σ_n f_{n,i}`` of source class ``i`` over all samples. A source class with no mass at all
    (possible only after float underflow) gets cost 1 everywhere: it is tied to no target class.
    """
    # torch's element-wise kernels use every core and keep the input's memory layout (the
    # accumulator hands out a transposed view): about 3x faster than numpy at 21843 x 555
    sums = torch.from_numpy(np.asarray(prob_sums, dtype=np.float64))
    totals = sums.sum(dim=1, keepdim=True)
    # A zero-mass row has all-zero sums, so dividing it by 1 gives share 0, i.e. cost 1.
    cost = sums / torch.where(totals > 0, totals, 1.0)
    return cost.neg_().add_(1.0).numpy()


def frequency_cost_from_counts(counts: np.ndarray) -> np.ndarray:
    """Frequency cost of §6.4.4, ``C_f = max(A) − A`` (A: source × target argmax counts)."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts.max() - counts


def ot_cost(
    source_probs: torch.Tensor | np.ndarray,
    target_labels: torch.Tensor | np.ndarray,
    n_target: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """OTLM cost matrix (n_source, n_target) of eq. 6.10, computed in batches of ``batch_size``."""
    acc = accumulate(source_probs, target_labels, n_target, batch_size, counts=False)
    return ot_cost_from_sums(acc.stats().prob_sums)


def frequency_matrix(
    source_probs: torch.Tensor | np.ndarray,
    target_labels: torch.Tensor | np.ndarray,
    n_target: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Argmax counts (n_source, n_target): FLM's frequency matrix (as ILM-VP's ``get_dist_matrix``)."""
    return accumulate(source_probs, target_labels, n_target, batch_size).stats().counts
