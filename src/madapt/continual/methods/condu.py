"""ConDU: continual decoupling-unifying, model fusion for continual learning of CLIP (seed 002).

Per task (seed 002 §4.1, Figure 1), as ConDU's code runs it (``src/main.py``, ``finetune.py``):

1. *Tuning individually*: the task is fine-tuned from the pretrained θ⁰ with ZSCL's loss and
   schedule (the `individual` baseline's training); δᵗ = θᵗ − θ⁰ over the trained tensors: every
   weight but the temperature (ConDU (FT)), or only the LoRA tensors of `madapt.peft.lora` on the
   MLPs of both towers (ConDU (LoRA), ``lora: {rank: 64}``; θ⁰ then holds the initial LoRA).
2. *Decoupling and unifying*: the stored tasks are decoupled from the unified delta by their
   triggers and unified again with δᵗ (`madapt.continual.fusion.remerge`); the method keeps only
   the unified delta, one bit-packed mask and one rescaler per task.
3. *Prototypes* (§4.2): per class, normalise((mean of the pretrained model's normalised training
   image features + the class's template-averaged normalised text feature) / 2).

Prediction (§4.2, ``src/models/evaluation.py``). A seen task with its id uses its own decoupled
expert θ⁰ + rescalerᵢ · maskᵢ ⊙ unified (the freshly trained model is not used: the code
evaluates the decoupled one). An unseen task, or any task without its id, is predicted by
aggregation: each test image's pretrained feature is compared with every task's prototypes, the
task's score is its best cosine similarity, and the logits of the ``top_k`` best-scoring experts,
each with its own text tower over the evaluated label space, are averaged. Deviations from the
seed's text, kept because the seed's numbers come from the code: the code's aggregation also
averages in the pretrained model's logits (``include_pretrained``) and its default is 4 experts
(``--logits_num 4``, so 5 models, the K = 5 that appendix F finds best); its rescaler is the
per-tensor-mean variant (``rescale: tensor_mean``, see `fusion`). Averaging instead of summing
does not change an argmax.

Memory: evaluation keeps the pretrained model and every decoupled expert resident (t + 1 model
copies, built once per task, never per batch); each batch runs an expert only on the images that
selected it. Storage: the method state (and so each checkpoint) holds the unified delta, packed
masks, rescalers and prototypes, never the experts; `summary` reports it as appendix H does.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from madapt.continual import fusion
from madapt.continual.losses import all_but_logit_scale
from madapt.continual.method import ContinualMethod, MethodConfig
from madapt.continual.methods.finetune import ce_loss
from madapt.continual.stream import eval_batches
from madapt.peft.lora import LoraConfig, inject_lora, lora_parameters
from madapt.registry import register

MB = 1024 * 1024


class ConDUConfig(MethodConfig):
    name: Literal["condu"] = "condu"
    top_k: int = Field(
        4, ge=1, description="experts aggregated per image for unseen / id-less tasks (code: --logits_num 4)"
    )
    include_pretrained: bool = Field(
        True, description="aggregation also averages the pretrained model's logits (ConDU's code)"
    )
    rescale: fusion.Rescale = Field(
        "tensor_mean",
        description="rescaler: tensor_mean (the code), global (§4.1's formula), none (Table 5 ablation)",
    )
    k_sweep: list[int] = Field(
        [],
        description="also measure the unseen-task accuracy of every row for each of these K "
        "(appendix F, Table 11); reported as a Transfer per K",
    )
    lora: LoraConfig | None = Field(
        None, description="ConDU (LoRA): train only LoRA on the MLPs of both towers (rank 64); None: full FT"
    )


@register("method", "condu")
class ConDU(ContinualMethod):
    Config = ConDUConfig

    def __init__(self, cfg: ConDUConfig) -> None:
        self.cfg = cfg
        self.unified: dict[str, torch.Tensor] = {}
        self.masks: list[dict[str, torch.Tensor]] = []  # packed, one dict per task
        self.rescalers = torch.zeros(0, dtype=torch.float64)
        self.prototypes: list[torch.Tensor] = []  # (n_classes, d) per task, pretrained feature space
        self.merge_seconds: list[float] = []
        self.sweep: dict[str, list[list[float | None]]] = {}  # K -> rows of unseen-task accuracies
        self._pretrained: torch.nn.Module | None = None
        self._experts: dict[int, torch.nn.Module] = {}

    # -- training ---------------------------------------------------------------------------

    def setup(self, ctx) -> None:
        if self.cfg.lora is not None:  # before θ⁰ is snapshotted: θ⁰ holds the initial LoRA
            inject_lora(ctx.model, self.cfg.lora, seed=ctx.settings.seed)

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        if self.cfg.lora is None:
            return all_but_logit_scale(model)
        model.requires_grad_(False)
        return [p.requires_grad_(True) for _, p in lora_parameters(model)]

    def before_task(self, ctx) -> None:
        ctx.model.load_state_dict(ctx.pretrained)  # tuning individually: every task from θ⁰

    def loss(self, batch, ctx) -> torch.Tensor:
        return ce_loss(batch, ctx)

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        start = time.perf_counter()
        trained = {id(p) for p in self.trainable_parameters(ctx.model)}
        delta = {
            n: p.detach() - ctx.pretrained[n] for n, p in ctx.model.named_parameters() if id(p) in trained
        }
        self.unified, self.masks, self.rescalers = fusion.remerge(
            self.unified, self.masks, self.rescalers, delta, self.cfg.rescale
        )
        del delta
        self.merge_seconds.append(time.perf_counter() - start)
        self.prototypes.append(self._prototypes(ctx))
        self._experts.clear()  # every expert changed with the merge
        if self.cfg.k_sweep:
            self._sweep_row(ctx)

    def _pretrained_model(self, ctx) -> torch.nn.Module:
        if self._pretrained is None:
            self._pretrained = copy.deepcopy(ctx.model).eval()
            self._pretrained.load_state_dict(ctx.pretrained)
            self._pretrained.requires_grad_(False)
        return self._pretrained

    def _prototypes(self, ctx) -> torch.Tensor:
        """ConDU's ``finetune.py``: class means of normalised pretrained image features, plus the
        template mean of normalised text features, halved and normalised (text only if no image)."""
        model, task = self._pretrained_model(ctx), ctx.current
        sums, counts = None, torch.zeros(task.n_classes, device=ctx.device)
        for images, labels in eval_batches(
            task.train, ctx.settings.eval_batch_size, ctx.settings.num_workers
        ):
            with ctx.autocast():
                feats = F.normalize(model.encode_image(images.to(ctx.device)).float(), dim=-1)
            labels = labels.to(ctx.device)
            sums = torch.zeros(task.n_classes, feats.shape[1], device=ctx.device) if sums is None else sums
            sums.index_add_(0, labels, feats)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
        with ctx.autocast():
            text = F.normalize(model.encode_text(ctx.class_tokens(ctx.task, ensemble=True)).float(), dim=-1)
        text = text.view(task.n_classes, -1, text.shape[-1]).mean(dim=1)
        image = sums / counts.clamp(min=1)[:, None]
        proto = torch.where(counts[:, None] > 0, (image + text) / 2, text)
        return F.normalize(proto, dim=-1).cpu()

    # -- prediction -------------------------------------------------------------------------

    def expert(self, task: int, ctx) -> torch.nn.Module:
        """Task ``task``'s decoupled expert θ⁰ + δ̃, built once after each merge."""
        if task not in self._experts:
            model = copy.deepcopy(self._pretrained_model(ctx))
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, u in self.unified.items():
                    params[name].add_(
                        fusion.decoupled_tensor(u, self.masks[task][name], self.rescalers[task])
                    )
            self._experts[task] = model
        return self._experts[task]

    def logits(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        seen = len(self.masks)
        if task is not None and ctx.task_id_known and task < seen:
            return ctx.clip_logits(self.expert(task, ctx), images, task)
        return self.aggregate(images, task, ctx)

    def pretrained_view(
        self, images: torch.Tensor, task: int | None, ctx
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pretrained model's logits over ``task``'s label space and each stored task's score
        (its prototypes' best cosine with the image's pretrained feature, §4.2), (B, C) and (B, t)."""
        pretrained = self._pretrained_model(ctx)
        feats = F.normalize(pretrained.encode_image(images).float(), dim=-1)
        base = ctx.settings.logit_scale * feats @ ctx.eval_head(pretrained, task).T
        scores = [(feats @ p.to(feats.device).T).amax(dim=1) for p in self.prototypes]
        return base, torch.stack(scores, dim=1) if scores else feats.new_zeros(len(feats), 0)

    def aggregate(self, images: torch.Tensor, task: int | None, ctx) -> torch.Tensor:
        """§4.2's semantic aggregation over the ``top_k`` experts whose prototypes match best."""
        base, scores = self.pretrained_view(images, task, ctx)
        if not self.masks:
            return base
        chosen = scores.topk(min(self.cfg.top_k, len(self.masks)), dim=1).indices  # (B, k)
        total = base.clone() if self.cfg.include_pretrained else torch.zeros_like(base)
        for t in chosen.unique().tolist():
            rows = (chosen == t).any(dim=1)
            total[rows] += ctx.clip_logits(self.expert(t, ctx), images[rows], task)
        return total / (chosen.shape[1] + int(self.cfg.include_pretrained))

    @torch.no_grad()
    def _sweep_row(self, ctx) -> None:
        """Appendix F: accuracy on every task not trained yet, aggregating the best K experts, for
        each K of ``k_sweep``; the experts' logits are computed once per batch and shared by all K."""
        row: dict[str, list[float | None]] = {str(k): [None] * len(ctx.tasks) for k in self.cfg.k_sweep}
        experts = [self.expert(t, ctx) for t in range(len(self.masks))]
        for j in range(ctx.task + 1, len(ctx.tasks)):
            correct = dict.fromkeys(row, 0)
            total = 0
            spec = ctx.tasks[j]
            for images, labels in eval_batches(
                spec.test, ctx.settings.eval_batch_size, ctx.settings.num_workers
            ):
                images, labels = images.to(ctx.device), labels.to(ctx.device)
                with ctx.autocast():
                    base, scores = self.pretrained_view(images, j, ctx)
                    each = torch.stack([ctx.clip_logits(e, images, j).float() for e in experts])  # (t, B, C)
                order = scores.argsort(dim=1, descending=True)  # (B, t)
                for key in row:
                    k = min(int(key), len(experts))
                    chosen = torch.zeros_like(scores).scatter_(1, order[:, :k], 1.0)  # (B, t)
                    total_logits = torch.einsum("bt,tbc->bc", chosen, each)
                    if self.cfg.include_pretrained:
                        total_logits = total_logits + base
                    correct[key] += int((total_logits.argmax(dim=-1) == labels).sum())
                total += len(labels)
            for key in row:
                row[key][j] = 100.0 * correct[key] / max(total, 1)
        for key, values in row.items():
            self.sweep.setdefault(key, []).append(values)

    # -- state and report -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "unified": self.unified,
            "masks": self.masks,
            "rescalers": self.rescalers,
            "prototypes": self.prototypes,
            "merge_seconds": self.merge_seconds,
            "sweep": self.sweep,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unified = {k: v.clone() for k, v in state.get("unified", {}).items()}
        self.masks = [dict(m) for m in state.get("masks", [])]
        self.rescalers = torch.as_tensor(state.get("rescalers", []), dtype=torch.float64)
        self.prototypes = list(state.get("prototypes", []))
        self.merge_seconds = [float(s) for s in state.get("merge_seconds", [])]
        self.sweep = {k: [list(r) for r in rows] for k, rows in state.get("sweep", {}).items()}
        self._experts.clear()

    def summary(self, ctx) -> dict[str, Any]:
        """Storage as seed 002 appendix H (bytes as the tensors are held) and each merge's time."""
        model = fusion.tensor_bytes(ctx.pretrained)
        unified = fusion.tensor_bytes(self.unified)
        masks = fusion.mask_bytes(self.masks)
        extra = self.rescalers.numel() * 8 + sum(p.numel() * p.element_size() for p in self.prototypes)
        t = len(self.masks)
        rows = [
            ("pretrained model", model),
            ("unified delta", unified),
            (f"masks ({t} tasks, 1 bit per trained parameter)", masks),
            ("rescalers + prototypes", extra),
            ("ConDU total", model + unified + masks + extra),
            # appendix H: full FT keeps t whole models; LoRA keeps CLIP once plus t LoRA sets
            (f"individual experts ({t} tasks)", t * model if self.cfg.lora is None else model + t * unified),
        ]
        return {
            "storage": [{"item": item, "MB": round(b / MB, 2), "bytes": b} for item, b in rows],
            "rescalers": [round(float(r), 4) for r in self.rescalers],
            "merge_seconds": [round(s, 3) for s in self.merge_seconds],
            **({"k_sweep": self.sweep_table()} if self.sweep else {}),
        }

    def sweep_table(self) -> list[dict[str, Any]]:
        """Transfer (ZSCL's definition: per dataset, the mean over the rows before it was trained)
        for each K of the sweep, as appendix F's Table 11."""
        rows = []
        for key, matrix in self.sweep.items():
            n = len(matrix[0]) if matrix else 0
            cols = [[matrix[i][j] for i in range(min(j, len(matrix)))] for j in range(1, n)]
            per = [sum(c) / len(c) for c in cols if c and None not in c]
            rows.append({"K": int(key), "Transfer": round(sum(per) / len(per), 2) if per else None})
        return rows
