"""ConDU's model fusion algebra on delta models (seed 002 §4.1, Figure 2, appendix C).

A delta model is a dict ``name -> tensor`` (θᵗ − θ⁰ over the trained tensors). ConDU keeps one
*unified* delta and, per task, a *trigger*: a binary mask and a scalar rescaler.

- `unify` (§4.1): per element the elected sign is the sign of Σᵢ δᵢ; the unified entry is the
  largest-magnitude entry that agrees with it (the max where the sum is positive, the min where it
  is negative); maskᵢ = [δᵢ · unified > 0]; the rescaler restores each task's L1 magnitude.
- `decouple` (§4.1): δ̃ᵢ = rescalerᵢ · maskᵢ ⊙ unified.
- `remerge` (Figure 2): the step ConDU takes at every new task: the old tasks' deltas are replaced
  by their decoupled approximations and unified again with the new task's delta (appendix G's
  convergence argument is about this loop). It streams tensor by tensor: the only extra memory is
  the decoupled deltas of one tensor, never a second model.

As ConDU's code (``src/delta_models.py::unify_delta_models``), an element whose deltas sum to
exactly 0 elects the negative sign (the code's ``(mean > 0) * 2 - 1``). Rescalers
(``rescale``):

- ``tensor_mean`` (default, the reference code, hence the seed's tables): Σₙ mean|δᵢ[n]| /
  Σₙ mean|maskᵢ[n] ⊙ unified[n]|, one scalar per task built from per-tensor means;
- ``global`` (the formula written in §4.1): Σ|δᵢ| / Σ|maskᵢ ⊙ unified| over all elements;
- ``none``: every rescaler is 1 (the no-rescaler ablation of Table 5).

A task whose masked unified delta is all zero keeps rescaler 1 (the code divides by 0 there).
Masks are stored bit-packed (`pack_mask`): 1 bit per element per task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch

Rescale = Literal["tensor_mean", "global", "none"]
Delta = Mapping[str, torch.Tensor]
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def elected_sign(stacked: torch.Tensor) -> torch.Tensor:
    """+1 where Σᵢ δᵢ > 0, else −1 (ConDU's code: a zero sum elects −1); ``stacked`` is (t, ...)."""
    return torch.where(stacked.sum(dim=0) > 0, 1.0, -1.0).to(stacked.dtype)


def unify_tensor(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One tensor of `unify`: (unified, masks) for the (t, ...) stack of the tasks' deltas."""
    sign = elected_sign(stacked)
    masks = stacked * sign > 0
    # the largest agreeing magnitude, signed: the max where the sign is +, the min where it is -
    # (0 where no entry agrees: all zeros); equal to max_i |δ_i · mask_i| · sign, in two reductions
    unified = torch.where(sign > 0, stacked.amax(dim=0).clamp(min=0), stacked.amin(dim=0).clamp(max=0))
    return unified, masks


CHUNK = 1 << 22  # elements per slice of a merge (a multiple of 8, so packed masks slice on bytes)


def _rescalers(num: torch.Tensor, den: torch.Tensor, rescale: Rescale) -> torch.Tensor:
    if rescale == "none":
        return torch.ones_like(num)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0)


def _merge_tensor(
    rows: Callable[[int, int], torch.Tensor], numel: int, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Unify one tensor slice by slice. ``rows(a, b)`` gives the (t, b - a) stack of the tasks'
    flat deltas over elements a..b; the unified values are written to the flat ``out`` (which may
    be the stored unified tensor itself: a slice is read before it is overwritten). Returns the
    per-task |δ| sums, |mask ⊙ unified| sums and packed masks."""
    num = den = None
    packed: list[list[torch.Tensor]] = []
    for a in range(0, numel, CHUNK):
        b = min(numel, a + CHUNK)
        stacked = rows(a, b)
        u, m = unify_tensor(stacked)
        out[a:b] = u
        # per-slice sums in the delta's dtype (pairwise summation), accumulated across slices in float64
        n_part = stacked.abs().sum(dim=1).double()
        # the same reduction as n_part: a task equal to its masked unified delta gets exactly 1
        d_part = (m * u.abs()).sum(dim=1).double()
        num, den = (n_part, d_part) if num is None else (num + n_part, den + d_part)
        if not packed:
            packed = [[] for _ in range(len(stacked))]
        for i in range(len(stacked)):
            packed[i].append(pack_mask(m[i]))
    return num.cpu(), den.cpu(), [torch.cat(p) for p in packed]


def _accumulate(num, den, n_part, d_part, numel: int, rescale: Rescale):
    scale = numel if rescale == "tensor_mean" else 1  # the code sums per-tensor means
    return num + n_part / scale, den + d_part / scale


def unify(
    deltas: Sequence[Delta], rescale: Rescale = "tensor_mean"
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], torch.Tensor]:
    """(unified, packed masks, rescalers) of ``deltas`` (seed 002 §4.1)."""
    unified: dict[str, torch.Tensor] = {}
    masks: list[dict[str, torch.Tensor]] = [{} for _ in deltas]
    num = den = torch.zeros(len(deltas), dtype=torch.float64)
    for name, first in deltas[0].items():
        flats = [d[name].reshape(-1) for d in deltas]
        out = torch.empty_like(flats[0])
        n_part, d_part, packed = _merge_tensor(
            lambda a, b, flats=flats: torch.stack([f[a:b] for f in flats]), first.numel(), out
        )
        unified[name] = out.view_as(first)
        num, den = _accumulate(num, den, n_part, d_part, first.numel(), rescale)
        for i, p in enumerate(packed):
            masks[i][name] = p
    return unified, masks, _rescalers(num, den, rescale)


def decouple(
    unified: Delta, packed_masks: Mapping[str, torch.Tensor], rescaler: float
) -> dict[str, torch.Tensor]:
    """δ̃ = rescaler · mask ⊙ unified (seed 002 §4.1), from a task's packed mask."""
    return {n: decoupled_tensor(u, packed_masks[n], rescaler) for n, u in unified.items()}


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bits (8 elements per byte, little-endian within a byte)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BITS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: torch.Size | Sequence[int]) -> torch.Tensor:
    """Inverse of `pack_mask` for a tensor of ``shape``."""
    n = math.prod(int(s) for s in shape)
    return ((packed.view(-1, 1) & _BITS.to(packed.device)) != 0).reshape(-1)[:n].reshape(tuple(shape))


def decoupled_tensor(
    unified: torch.Tensor, packed: torch.Tensor, rescaler: float | torch.Tensor
) -> torch.Tensor:
    """One tensor of task i's decoupled delta from the stored (unified, packed mask, rescaler)."""
    return unified * unpack_mask(packed, unified.shape).to(unified.dtype) * float(rescaler)


def remerge(
    unified: dict[str, torch.Tensor],
    packed_masks: list[dict[str, torch.Tensor]],
    rescalers: torch.Tensor,
    new_delta: Delta,
    rescale: Rescale = "tensor_mean",
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], torch.Tensor]:
    """Decouple the stored tasks, unify them with ``new_delta``: the state after one more task.

    ``unified`` is updated in place, slice by slice (`CHUNK` elements), so a merge holds only the
    t + 1 decoupled rows of one slice beside the stored state, never a second model; returns
    (unified, packed masks, rescalers) for the t + 1 tasks. With no stored task it equals
    ``unify([new_delta])``.
    """
    t = len(packed_masks)
    masks: list[dict[str, torch.Tensor]] = [{} for _ in range(t + 1)]
    num = den = torch.zeros(t + 1, dtype=torch.float64)
    scales = [float(r) for r in rescalers]
    for name, fresh in new_delta.items():
        if name not in unified:
            unified[name] = torch.zeros_like(fresh)
        u_flat, f_flat = unified[name].view(-1), fresh.reshape(-1).to(unified[name].dtype)

        def rows(a: int, b: int, name=name, u_flat=u_flat, f_flat=f_flat) -> torch.Tensor:
            stored = u_flat[a:b]
            old = [
                stored * unpack_mask(packed_masks[i][name][a // 8 : (b + 7) // 8], (b - a,)) * scales[i]
                for i in range(t)
            ]
            return torch.stack([*old, f_flat[a:b]])

        n_part, d_part, packed = _merge_tensor(rows, fresh.numel(), u_flat)
        num, den = _accumulate(num, den, n_part, d_part, fresh.numel(), rescale)
        for i, p in enumerate(packed):
            masks[i][name] = p
    return unified, masks, _rescalers(num, den, rescale)


def mask_bytes(packed_masks: Sequence[Mapping[str, torch.Tensor]]) -> int:
    return sum(int(m.numel()) for task in packed_masks for m in task.values())


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(int(v.numel() * v.element_size()) for v in tensors.values())
