"""The proximity algebra of AwoF (seed 000 §3.4.1-3.4.2, eqs. 3.3-3.12): tensors in, tensors out.

One model's view of a set of reference vertices is the bipartite graph G = (V_I, V_T, E) of
§3.4.1: m image embeddings and n text embeddings, every image joined to every text. On it:

- first-order proximity (eqs. 3.3-3.4): for each vertex, a distribution over its neighbours of the
  other modality. The seed writes a ratio of cosine similarities, which is not a distribution once
  a similarity is negative; as for CLIP's own classifier we take ``softmax(cos / tau)`` (tau: the
  temperature of Algorithm 1).
- second-order proximity (eqs. 3.5-3.7): between two vertices of one modality, the cosine
  similarity of their first-order distributions; for image rows this is the matrix product
  ``P1 P1^T`` of eq. 3.6 (``u_i^T U_T U_T^T u_j`` with the softmax and the normalisation kept),
  followed by a softmax over the *other* vertices of that modality (eq. 3.7; the vertex itself is
  not its own neighbour).

Everything is held as log-probabilities with one row per vertex, images first. `vertex_losses`
is eq. 3.8, `distances` eq. 3.10, `teacher_weights` eqs. 3.9, 3.11 and 3.12's (C_0, C_{i-1})
weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Distance = Literal["kl", "js", "l2"]
Weighting = Literal["adaptive", "c0", "previous", "average", "uniform"]


@dataclass(frozen=True)
class Proximities:
    """Log-proximities of one model on one vertex set (m images, n texts)."""

    first_image: torch.Tensor  # m x n: log p1(. | image i) over the texts (eq. 3.4)
    first_text: torch.Tensor  # n x m: log p1(. | text j) over the images
    second_image: torch.Tensor  # m x (m-1): log p2(. | image i) over the other images (eq. 3.7)
    second_text: torch.Tensor  # n x (n-1): log p2(. | text j) over the other texts


def _second_order(log_first: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eqs. 3.5-3.7 for the vertices of one modality, given their first-order log-distributions."""
    q = F.normalize(log_first.exp(), dim=-1)
    similarity = q @ q.T / temperature  # eq. 3.5 for every pair at once (eq. 3.6's matrix product)
    k = similarity.shape[0]
    others = ~torch.eye(k, dtype=torch.bool, device=similarity.device)
    return similarity[others].view(k, k - 1).log_softmax(dim=-1)


def proximities(
    images: torch.Tensor, texts: torch.Tensor, temperature: float, second_temperature: float = 1.0
) -> Proximities:
    """First- and second-order proximities of the graph on ``images`` (m x d) and ``texts`` (n x d).

    ``temperature`` is tau of eqs. 3.3-3.4 (softmax of cosine / tau); ``second_temperature``
    divides the similarities of eq. 3.7, which the seed writes without one (1).
    """
    cosine = F.normalize(images.float(), dim=-1) @ F.normalize(texts.float(), dim=-1).T
    first_image = (cosine / temperature).log_softmax(dim=-1)
    first_text = (cosine.T / temperature).log_softmax(dim=-1)
    return Proximities(
        first_image,
        first_text,
        _second_order(first_image, second_temperature),
        _second_order(first_text, second_temperature),
    )


def _kl(target: torch.Tensor, log: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(target || exp(log)) of log-distributions."""
    return (target.exp() * (target - log)).sum(dim=-1)


def _per_vertex(rows_image: torch.Tensor, rows_text: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows_image, rows_text])


def vertex_losses(
    teacher: Proximities, student: Proximities, first: bool = True, second: bool = True
) -> torch.Tensor:
    """Eq. 3.8 for every vertex (m + n values, images first), the terms switched by the ablation flags.

    Each term is the cross-entropy of the student's distribution against the teacher's, minus the
    teacher's entropy, i.e. KL(teacher || student): the same gradient for the student, and 0 when
    the student's proximities equal the teacher's.
    """
    loss = torch.zeros(
        teacher.first_image.shape[0] + teacher.first_text.shape[0], device=student.first_image.device
    )
    if first:
        loss = loss + _per_vertex(
            _kl(teacher.first_image, student.first_image), _kl(teacher.first_text, student.first_text)
        )
    if second:
        loss = loss + _per_vertex(
            _kl(teacher.second_image, student.second_image), _kl(teacher.second_text, student.second_text)
        )
    return loss


def distances(teacher: Proximities, student: Proximities, metric: Distance = "kl") -> torch.Tensor:
    """Eq. 3.10: d(teacher p1(v_k), student p1(v_k)) for every vertex (m + n values, images first)."""

    def rows(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if metric == "kl":
            return _kl(t, s)
        if metric == "js":
            mid = torch.logsumexp(torch.stack([t, s]), dim=0) - math.log(2.0)
            return 0.5 * (_kl(t, mid) + _kl(s, mid))
        return (t.exp() - s.exp()).norm(dim=-1)

    return _per_vertex(
        rows(teacher.first_image, student.first_image), rows(teacher.first_text, student.first_text)
    )


def teacher_weights(
    scheme: Weighting, d_pretrained: torch.Tensor, d_previous: torch.Tensor, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vertex weights (w for C_0, w for C_{i-1}) of the two teachers' losses.

    adaptive: eq. 3.11, w_0 = exp(d_0) / (exp(d_0) + exp(d_prev)) and 1 - w_0 for C_{i-1} (eq. 3.12):
    the teacher the student has drifted further from gets the larger weight. c0 / previous: 1-0 and
    0-1 weighting, average: 0.5-0.5 (Table 3.9); uniform: 1 and lambda (eq. 3.9).
    """
    if scheme == "adaptive":
        w = torch.sigmoid(d_pretrained - d_previous)  # eq. 3.11, written stably
        return w, 1.0 - w
    fixed = {"c0": (1.0, 0.0), "previous": (0.0, 1.0), "average": (0.5, 0.5), "uniform": (1.0, lam)}[scheme]
    ones = torch.ones_like(d_pretrained)
    return fixed[0] * ones, fixed[1] * ones
