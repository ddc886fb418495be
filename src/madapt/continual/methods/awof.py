"""AwoF: dual-teacher graph-proximity distillation on reference data (seed 000 ch. 3, Algorithm 1).

Each step the loss is L = L_CE + L_PD (eq. 3.13). L_CE is the task loss every CLIP method here uses
(ZSCL's: label smoothing, first template, trainable text tower). L_PD is computed on a graph of
reference vertices (Algorithm 1: m wild images and n wild texts, every image joined to every text):

- each of three models embeds the vertices: the student C_i, the pretrained C_0 and the task-start
  model C_{i-1} (C_0 on the first task); `madapt.continual.graph` turns each view into first- and
  second-order proximities (eqs. 3.3-3.7; first order as softmax(cos / tau), see there);
- per vertex, the loss against each teacher is the sum of the first- and second-order terms
  (eq. 3.8), weighted per vertex by the teachers' distances to the student (eqs. 3.10-3.12), or by
  a fixed scheme for the ablations of Table 3.9; L_PD is the mean over the m + n vertices.

Which student embeddings enter: both. The proximities of a model are defined on the embeddings
its own encoders give (§3.4.1.1: u_I = Enc_I(v_I), u_T = Enc_T(v_T)) and the whole of CLIP is
trained, so the student's text tower encodes the step's n texts too (unlike ZSCL, whose distillation
uses the teacher's caption embeddings). The student forward on the reference vertices cannot be
cached; the teachers' can.

Teacher cache (ours; issue 11 item 7). Both teachers are frozen within a task, so ``before_task``
draws the task's reference pool (``pool_images`` images and ``pool_texts`` captions, seeded from
the run seed and the task), embeds it once with C_0 and C_{i-1} and drops both models; each step's
vertices are drawn from the pool (a pure function of (seed, task, step), so a resumed run samples
the same ones). The objective per step is unchanged; what changes is that a task's vertices come
from its pool instead of the whole reference set (pool >= reference set: no change at all).
``teacher_cache: false`` keeps both teachers as models and runs them on every step's vertices,
drawn from the whole reference set.

Choices where the seed is silent, kept and documented: tau defaults to CLIP's own temperature,
1 / train.logit_scale, the tau of L_CE in Algorithm 1; eq. 3.7's softmax has no temperature (1);
the weights carry no gradient (``weight_grad``); the per-vertex term is KL(teacher || student),
i.e. eq. 3.8's cross-entropy minus the teacher's entropy, a constant for the student: the same
gradient while the weights are detached, and L_PD = 0 at the teachers; n (texts per step) defaults
to m; the schedule is the engine's (ZSCL's warmup + cosine), the optimizer Adam (§3.5.2).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset, Subset

from madapt.continual import graph
from madapt.continual.losses import all_but_logit_scale, frozen_copy
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.continual.methods.finetune import ce_loss
from madapt.continual.stream import BatchStream, batch_indices
from madapt.registry import register
from madapt.training import build_optimizer

EMBED_CHUNK = 256  # vertices per teacher forward while filling the cache


class AwoFConfig(MethodConfig):
    name: Literal["awof"] = "awof"
    reference_batch_size: int = Field(
        64, ge=2, description="m: reference images per step (Algorithm 1: the task batch size, 64 in §3.5.2)"
    )
    text_batch_size: int = Field(
        64, ge=2, description="n: reference texts per step (Algorithm 1; the seed gives no value: m)"
    )
    temperature: float | None = Field(
        None, gt=0.0, description="tau of eqs. 3.3-3.4 (Algorithm 1); None: CLIP's 1 / train.logit_scale"
    )
    second_temperature: float = Field(
        1.0, gt=0.0, description="divides the similarities of eq. 3.7 (the seed: 1)"
    )
    first_order: bool = Field(True, description="first-order term of eq. 3.8 (Table 3.8 ablation)")
    second_order: bool = Field(True, description="second-order term of eq. 3.8 (Table 3.8 ablation)")
    weighting: graph.Weighting = Field(
        "adaptive",
        description="adaptive (eqs. 3.10-3.12); c0 / previous: only "
        "one teacher; average: 0.5-0.5 (Table 3.9); uniform: 1 and lambda (eq. 3.9)",
    )
    lam: float = Field(1.0, ge=0.0, description="lambda of eq. 3.9 (weighting: uniform)")
    distance: graph.Distance = Field("kl", description="d of eq. 3.10 between first-order distributions")
    weight_grad: bool = Field(
        False,
        description="let the gradient flow through the weights of eq. 3.11 "
        "(the seed does not say; default: detached)",
    )
    pd_weight: float = Field(1.0, ge=0.0, description="weight of L_PD in eq. 3.13 (the seed: 1)")
    teacher_cache: bool = Field(
        True,
        description="embed each task's reference pool once with both teachers "
        "(ours); false: both teachers run live every step",
    )
    pool_images: int = Field(10_000, ge=2, description="reference images in a task's pool (teacher_cache)")
    pool_texts: int = Field(16_384, ge=2, description="reference captions in a task's pool (teacher_cache)")


def _subset(dataset: Dataset, indices: list[int]) -> Dataset:
    """``dataset`` restricted to ``indices``, keeping a vectorised ``batch`` when it has one."""
    subset = Subset(dataset, indices)
    if hasattr(dataset, "batch"):
        subset.batch = lambda positions: dataset.batch([indices[p] for p in positions])  # type: ignore[attr-defined]
    return subset


def _pool(n: int, size: int, seed: list[int]) -> list[int]:
    """``size`` distinct indices of ``n`` (all of them when size >= n), sorted, drawn from ``seed``."""
    if size >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=size, replace=False))


@torch.no_grad()
def _embed(
    model: torch.nn.Module, images: Dataset, tokens: torch.Tensor, ctx
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float32 embeddings of every image of ``images`` and every row of ``tokens``."""
    was_training = model.training
    model.eval()
    n = len(images)  # type: ignore[arg-type]
    stream = BatchStream(images, EMBED_CHUNK, seed=0, num_workers=ctx.settings.num_workers, sequential=True)
    with ctx.autocast():
        img = [
            model.encode_image(stream.images(c).to(ctx.device)).float() for c in range(-(-n // EMBED_CHUNK))
        ]
        txt = [model.encode_text(chunk).float() for chunk in tokens.split(EMBED_CHUNK)]
    model.train(was_training)
    return F.normalize(torch.cat(img), dim=-1), F.normalize(torch.cat(txt), dim=-1)


@register("method", "awof")
class AwoF(ContinualMethod):
    Config = AwoFConfig
    needs_reference = True

    def __init__(self, cfg: AwoFConfig) -> None:
        self.cfg = cfg
        self.teachers: dict[str, torch.nn.Module] = {}  # live mode only: "c0", "previous"
        self.cache: dict[
            str, tuple[torch.Tensor, torch.Tensor]
        ] = {}  # cached mode: (images, texts) per teacher

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return all_but_logit_scale(model)

    def optimizer(self, params: list[Any], ctx) -> torch.optim.Optimizer:
        """Adam (§3.5.2), the task's learning rate and the run's weight decay."""
        return build_optimizer(
            params, "adam", lr=ctx.lr, weight_decay=ctx.settings.weight_decay, fused=ctx.device.type == "cuda"
        )

    # -- the task's vertices ------------------------------------------------------------------

    @torch.no_grad()
    def before_task(self, ctx) -> None:
        ref, seed, cfg = ctx.reference, ctx.settings.seed, self.cfg
        live = not cfg.teacher_cache
        images = _pool(len(ref.images), len(ref.images) if live else cfg.pool_images, [seed, 11, ctx.task])
        texts = _pool(len(ref.captions), len(ref.captions) if live else cfg.pool_texts, [seed, 13, ctx.task])
        self.tokens = ctx.backbone.tokenize([ref.captions[i] for i in texts]).to(ctx.device)
        self.images = BatchStream(
            _subset(ref.images, images),
            cfg.reference_batch_size,
            seed * 1_000_003 + 7_001 + ctx.task,
            ctx.settings.num_workers,
        )
        self.text_seed = seed * 1_000_003 + 9_001 + ctx.task
        c0 = frozen_copy(ctx.model)
        c0.load_state_dict(ctx.pretrained)
        # C_{i-1} is the model as the task starts; on the first task it is C_0 itself
        at_start = ctx.model.state_dict()
        first = all(torch.equal(v, ctx.pretrained[k]) for k, v in at_start.items())
        previous = c0 if first else frozen_copy(ctx.model)
        self.teachers, self.cache = {}, {}
        if live:
            self.teachers = {"c0": c0, "previous": previous}
            return
        self.cache["c0"] = _embed(c0, self.images.dataset, self.tokens, ctx)
        self.cache["previous"] = (
            self.cache["c0"] if first else _embed(previous, self.images.dataset, self.tokens, ctx)
        )
        del c0, previous  # the teachers are their embeddings from here on

    def vertices(self, step: int) -> tuple[list[int], list[int]]:
        """Pool positions of step ``step``'s m images and n texts (a pure function of seed, task, step)."""
        texts = batch_indices(len(self.tokens), self.cfg.text_batch_size, step, self.text_seed)
        return self.images.indices(step), texts

    # -- the loss -----------------------------------------------------------------------------

    def teacher_embeddings(
        self, name: str, images: torch.Tensor, image_pos: list[int], text_pos: list[int], ctx
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One teacher's normalised embeddings of the step's vertices: from the cache, or live."""
        if self.cache:
            img, txt = self.cache[name]
            return img[image_pos], txt[text_pos]
        with torch.no_grad():
            teacher = self.teachers[name]
            img = F.normalize(teacher.encode_image(images).float(), dim=-1)
            return img, F.normalize(teacher.encode_text(self.tokens[text_pos]).float(), dim=-1)

    def proximity_loss(
        self, student: graph.Proximities, c0: graph.Proximities, previous: graph.Proximities
    ) -> torch.Tensor:
        """L_PD of eq. 3.12 (or eq. 3.9 / Table 3.9's fixed schemes): the mean over the m + n vertices."""
        cfg = self.cfg
        with torch.set_grad_enabled(cfg.weight_grad and torch.is_grad_enabled()):
            w0, wp = graph.teacher_weights(
                cfg.weighting,
                graph.distances(c0, student, cfg.distance),
                graph.distances(previous, student, cfg.distance),
                cfg.lam,
            )
        l0 = graph.vertex_losses(c0, student, cfg.first_order, cfg.second_order)
        lp = graph.vertex_losses(previous, student, cfg.first_order, cfg.second_order)
        return (w0 * l0 + wp * lp).mean()

    def distillation(self, step: int, ctx) -> torch.Tensor:
        """L_PD on step ``step``'s vertices (Algorithm 1's inner loop after L_CE)."""
        tau = self.cfg.temperature or 1.0 / ctx.settings.logit_scale
        image_pos, text_pos = self.vertices(step)
        images = self.images.images(step).to(ctx.device)
        model = ctx.model
        student = graph.proximities(
            model.encode_image(images),
            model.encode_text(self.tokens[text_pos]),
            tau,
            self.cfg.second_temperature,
        )
        with torch.no_grad():
            views = {
                name: graph.proximities(
                    *self.teacher_embeddings(name, images, image_pos, text_pos, ctx),
                    tau,
                    self.cfg.second_temperature,
                )
                for name in ("c0", "previous")
            }
        return self.proximity_loss(student, views["c0"], views["previous"])

    def loss(self, batch, ctx) -> torch.Tensor:
        loss = ce_loss(batch, ctx)
        if ctx.micro_batch == 0 and self.cfg.pd_weight > 0:
            # the graph couples all of a step's vertices, so it is not split across micro-batches: it
            # enters once per step, scaled by the number the engine divides every micro-batch loss by
            loss = loss + ctx.settings.accumulate * self.cfg.pd_weight * self.distillation(ctx.step, ctx)
        return loss

    def after_task(self, ctx) -> None:
        self.teachers, self.cache = {}, {}
