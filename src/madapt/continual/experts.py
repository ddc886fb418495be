"""What MM-MoE and MoE-Adapters share: which router predicts a test image, and how often it is right.

MTIL (seed 000 §4.5.2.1): a `TaskSelector` (DDAS) picks a seen task per test sample from the
frozen CLIP's image features, or -1 (frozen CLIP, experts off), which is why unseen tasks score
zero-shot accuracy. Without a selector the task id decides (seen tasks use their router, unseen
ones the frozen CLIP): the oracle the selector is measured against. CIL (§4.5.3.1) and any
evaluation without a task id use the latest router for every sample and no selector.

Routing accuracy is counted per (row, dataset): a sample of a seen dataset is routed correctly
when its own task is chosen, a sample of an unseen dataset when the frozen CLIP is.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from madapt.continual.selector import SelectorConfig, TaskSelector
from madapt.continual.stream import eval_batches


class TaskRouting:
    def __init__(self, cfg: SelectorConfig | None) -> None:
        self.cfg = cfg
        self.selector: TaskSelector | None = None
        self.hits: dict[str, list[int]] = {}  # "row/dataset" -> [correct, total]

    @torch.no_grad()
    def frozen_features(self, model: torch.nn.Module, images: torch.Tensor, ctx) -> torch.Tensor:
        routing = model.moe_routing
        before, routing.image = routing.image, None
        with ctx.autocast():
            feats = model.encode_image(images).float()
        routing.image = before
        return feats

    @torch.no_grad()
    def fit(self, ctx) -> None:
        """After a task: train its autoencoder (and, once, autoencoder 0 on the reference images)."""
        if self.cfg is None:
            return
        model = ctx.model
        was_training = model.training
        model.eval()
        feats = self._features(model, ctx.current.train, ctx)
        if self.selector is None:
            self.selector = TaskSelector(self.cfg, feats.shape[1]).to(ctx.device)
        if ctx.task == 0 and ctx.reference is not None and self.cfg.reference_iterations > 0:
            ref = self._features(model, ctx.reference.images, ctx)
            self.selector.fit(ref, seed=ctx.settings.seed * 1000 + 999, reference=True)
        self.selector.fit(feats, seed=ctx.settings.seed * 1000 + ctx.task)
        model.train(was_training)

    def _features(self, model, dataset, ctx) -> torch.Tensor:
        out = [
            self.frozen_features(model, images.to(ctx.device), ctx)
            for images, _ in eval_batches(dataset, ctx.settings.eval_batch_size, ctx.settings.num_workers)
        ]
        return torch.cat(out)

    @torch.no_grad()
    def choose(
        self, images: torch.Tensor, task: int | None, ctx, router_of: Callable[[int], int]
    ) -> torch.Tensor:
        """One router index per image (-1: frozen CLIP); records routing accuracy when ``task`` is known."""
        n, device = len(images), images.device
        if task is None or ctx.settings.class_incremental or not ctx.task_id_known and self.selector is None:
            return torch.full((n,), router_of(ctx.task), dtype=torch.long, device=device)
        truth = task if task <= ctx.task else -1
        if self.selector is None:
            chosen = torch.full((n,), truth, dtype=torch.long, device=device)
        else:
            chosen = self.selector.select(self.frozen_features(ctx.model, images, ctx))
            hit = self.hits.setdefault(f"{ctx.task}/{task}", [0, 0])
            hit[0] += int((chosen == truth).sum())
            hit[1] += n
        return torch.where(
            chosen >= 0, torch.tensor([router_of(t) for t in chosen.tolist()], device=device), chosen
        )

    def report(self, ctx) -> list[dict[str, Any]]:
        """Per dataset: routing accuracy when seen (over every row after its task) and unseen."""
        rows = []
        for j, spec in enumerate(ctx.tasks):
            seen = [
                self.hits[k] for k in self.hits if int(k.split("/")[1]) == j and int(k.split("/")[0]) >= j
            ]
            unseen = [
                self.hits[k] for k in self.hits if int(k.split("/")[1]) == j and int(k.split("/")[0]) < j
            ]
            rows.append(
                {
                    "dataset": spec.name,
                    "seen: own task chosen (%)": _rate(seen),
                    "unseen: frozen CLIP chosen (%)": _rate(unseen),
                }
            )
        return rows

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hits": {k: list(v) for k, v in self.hits.items()}}
        if self.selector is not None:
            out["selector"] = self.selector.state()
        return out

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        self.hits = {k: [int(a), int(b)] for k, (a, b) in state.get("hits", {}).items()}
        if "selector" in state and self.cfg is not None:
            tasks = state["selector"].get("tasks", [])
            ref = state["selector"].get("reference")
            dim = (ref or tasks[0])["0.weight"].shape[1] if (ref or tasks) else 0
            self.selector = TaskSelector(self.cfg, dim).to(device)
            self.selector.load(state["selector"], device)


def routed_logits(
    images: torch.Tensor,
    chosen: torch.Tensor,
    tasks: list[int],
    ctx,
    similarity: Callable[[torch.Tensor, int, int], torch.Tensor],
) -> torch.Tensor:
    """scale · similarity over ``tasks``' classes, each image encoded with its chosen router;
    ``similarity(unit image embeddings, task, router)`` gives [b, n_classes] cosines."""
    routing, out = ctx.model.moe_routing, None
    for r in chosen.unique().tolist():
        rows = (chosen == r).nonzero().squeeze(1)
        routing.image = r
        img = F.normalize(ctx.model.encode_image(images[rows]).float(), dim=-1)
        routing.image = None
        part = ctx.settings.logit_scale * torch.cat([similarity(img, t, r) for t in tasks], dim=1)
        out = part.new_zeros(len(images), part.shape[1]) if out is None else out
        out[rows] = part
    return out


def text_head(ctx, task: int, router: int) -> torch.Tensor:
    """[C, D] template-ensembled class embeddings of ``task`` through text router ``router``."""
    routing = ctx.model.moe_routing
    routing.text = router
    feats = ctx.model.encode_text(ctx.class_tokens(task, ensemble=True))
    routing.text = None
    return template_mean(feats, ctx.tasks[task].n_classes)


def _rate(hits: list[list[int]]) -> float | None:
    total = sum(h[1] for h in hits)
    return None if total == 0 else round(100.0 * sum(h[0] for h in hits) / total, 2)


def template_mean(feats: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[..., C·T, D] normalised per prompt -> [..., C, D]: ZSCL's template ensemble."""
    feats = F.normalize(feats.float(), dim=-1)
    feats = feats.view(*feats.shape[:-2], n_classes, -1, feats.shape[-1]).mean(dim=-2)
    return F.normalize(feats, dim=-1)


def count_parameters(params: list[Any]) -> int:
    """Elements of a trainable-parameter list (tensors or torch param groups)."""
    total = 0
    for p in params:
        total += sum(q.numel() for q in p["params"]) if isinstance(p, dict) else p.numel()
    return total


class StepCosts:
    """Table 4.10's run-time columns for the report: median seconds between optimizer steps and
    the peak memory (CUDA: allocated by torch; CPU: the process's peak resident set). Timing is not
    part of the method state, so after a resume it covers the steps run since."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last: float | None = None

    def start_task(self) -> None:
        self._last = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.seconds.append(now - self._last)
        self._last = now

    def report(self, device: torch.device) -> dict[str, Any]:
        if device.type == "cuda":
            peak = ("peak memory (MiB, CUDA allocated)", torch.cuda.max_memory_allocated(device) / 2**20)
        else:
            peak = (
                "peak memory (MiB, process RSS)",
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            )
        step = statistics.median(self.seconds) if self.seconds else None
        return {"step time (s, median)": None if step is None else round(step, 4), peak[0]: round(peak[1], 1)}
