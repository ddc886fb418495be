"""Step time and FLOPs of Adapt vs fixed-length K/V prompts vs prompts as real tokens (q/k/v), one run.

Issue 14's benchmark, on the micro CLIP and on ViT-B/16 (random init, no weights needed). Every
variant trains the same T total tokens (default 32) with SGD on random images of the model's size
and C class prompts; one step = forward of both towers, backward, optimizer step:

- ``kv_fixed``: fixed-length K/V prompts, T spread evenly over the layers (the baseline);
- ``adapt_pruning_mask`` / ``adapt_pruning_gather``: Adapt while pruning (ξ = 16 per layer, half of
  the pool already pruned at random), dead tokens as -inf columns or gathered out, with the score
  accumulation of every step and a pruning step every ``n_k`` steps;
- ``adapt_pruning_no_bookkeeping``: the same masked model without scores or pruning, so that
  ``bookkeeping`` = pruning_mask / no_bookkeeping - 1 (target <= 10 %);
- ``adapt_pruned``: Adapt once T_target is reached (a random heterogeneous layout of T live tokens,
  gathered), target <= 1.0 x kv_fixed;
- ``qkv_tokens``: VPT/MaPLe-style deep prompts as real tokens: the vision tower appends its layer's
  prompts to the sequence (they are queries too; VPT-deep replaces them at every layer), the text
  tower overwrites the positions after SOS (IVLP/MaPLe), the same per-layer lengths as kv_fixed.

Variants are interleaved over ``--rounds`` so machine load hits all alike; the median step is
reported. FLOPs: torch's counter on one forward of ``logits`` for the batch. Prints JSON.

    PYTHONPATH=src python benchmarks/adapt_bench.py --models micro vitb16 --steps 6 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from madapt.backbones.clip import load_clip
from madapt.backbones.micro import load_micro_clip
from madapt.peft.kv_prompts import tower_blocks, uniform_lengths
from madapt.prompting.adapt import Adapt, AdaptConfig, KVFixed, KVFixedConfig, KVPromptMethod
from madapt.prompting.fewshot import FewShotContext
from madapt.prompting.pruning import PruneSchedule


class TokenPromptBlock(nn.Module):
    """A frozen block whose prompts are real tokens.

    Appended (vision) or written over positions 1..n (text).
    """

    def __init__(self, block: nn.Module, n: int, append: bool) -> None:
        super().__init__()
        self.block, self.append = block, append
        self.prompts = nn.Parameter(0.02 * torch.randn(n, block.attn.embed_dim))

    def get_weight_dtype(self) -> torch.dtype:
        return self.block.get_weight_dtype()

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        n = self.prompts.shape[0]
        p = self.prompts.unsqueeze(0).expand(q_x.shape[0], -1, -1).to(q_x.dtype)
        if not self.append:
            return self.block(torch.cat([q_x[:, :1], p, q_x[:, 1 + n :]], dim=1), attn_mask=attn_mask)
        return self.block(torch.cat([q_x, p], dim=1), attn_mask=attn_mask)[:, : q_x.shape[1]]


class QKVTokens(KVPromptMethod):
    """Deep prompts as sequence tokens with kv_fixed's per-layer lengths (benchmark only)."""

    def lengths(self, layers, ctx):
        return uniform_lengths(self.cfg.total_tokens, layers)

    def setup(self, ctx: FewShotContext) -> None:
        towers = tower_blocks(ctx.backbone.model)
        lengths = self.lengths({t: len(b) for t, b in towers.items()}, ctx)
        self.token_blocks = []
        for tower, blocks in towers.items():
            for i, n in enumerate(lengths[tower]):
                blocks[i] = TokenPromptBlock(blocks[i], n, append=tower == "vision")
                self.token_blocks.append(blocks[i])
        self.blocks = {}
        self.tokens = ctx.backbone.tokenize([f"a photo of a {c}." for c in ctx.classnames])

    def trainable_parameters(self):
        return [b.prompts for b in self.token_blocks]


def make(model_name: str):
    torch.manual_seed(0)
    if model_name == "micro":
        return load_micro_clip()
    backbone = load_clip("ViT-B-16")
    backbone.model.requires_grad_(False)
    return backbone


def build(backbone, variant: str, total: int, classes: list[str], n_k: int):
    b = copy.deepcopy(backbone)
    b.model.requires_grad_(False)
    ctx = FewShotContext(
        b, classes, ["a photo of a {}."], torch.device("cpu"), epochs=1, steps_per_epoch=10**6
    )
    if variant in ("kv_fixed", "qkv_tokens"):
        method = (KVFixed if variant == "kv_fixed" else QKVTokens)(KVFixedConfig(total_tokens=total))
        method.setup(ctx)
        return method, ctx
    attend = "gather" if variant in ("adapt_pruning_gather", "adapt_pruned") else "mask"
    method = Adapt(AdaptConfig(t_target=total, n_k=n_k, r_p=1, attend=attend))
    method.setup(ctx)
    blocks = [blk for bs in method.blocks.values() for blk in bs]
    pool = sum(blk.prompts.shape[0] for blk in blocks)
    keep = pool // 2 if variant != "adapt_pruned" else total
    live = torch.zeros(pool, dtype=torch.bool)
    live[torch.randperm(pool, generator=torch.Generator().manual_seed(1))[:keep]] = True
    for k, blk in enumerate(blocks):
        blk.mask.copy_(live[16 * k : 16 * (k + 1)])
    if variant == "adapt_pruning_no_bookkeeping":
        method.after_backward = lambda ctx: None
    else:  # prune r_p = 1 token every n_k steps, never reaching T inside the benchmark
        method.schedule = PruneSchedule(0, n_k, 1, 10**6, True, False, "benchmark")
        method.cfg = method.cfg.model_copy(update={"t_target": min(total, keep - 100)})
    return method, ctx


def step_time(method, ctx, images, labels, steps: int) -> float:
    opt = method.optimizer(method.trainable_parameters(), ctx)
    times = []
    for s in range(steps + 1):
        began = time.perf_counter()
        loss = method.loss(images, labels, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.step = s
        method.after_backward(ctx)
        opt.step()
        if s:  # the first step warms up allocations
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def flops(method, ctx, images) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        method._text = None
        method.logits(images, ctx)
    return counter.get_total_flops() / 1e9


VARIANTS = (
    "kv_fixed",
    "adapt_pruning_mask",
    "adapt_pruning_gather",
    "adapt_pruning_no_bookkeeping",
    "adapt_pruned",
    "qkv_tokens",
)


def bench(model_name: str, args) -> dict:
    backbone = make(model_name)
    classes = [f"class{i}" for i in range(args.classes)]
    size = backbone.image_size
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(args.batch) % args.classes
    built = {v: build(backbone, v, args.tokens, classes, args.n_k) for v in VARIANTS}
    seconds = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v, (method, ctx) in built.items():
            seconds[v].append(step_time(method, ctx, images, labels, args.steps))
    median = {v: statistics.median(s) for v, s in seconds.items()}
    gflops = {v: round(flops(m, c, images), 4) for v, (m, c) in built.items()}
    base = median["kv_fixed"]
    return {
        "model": model_name,
        "image_size": size,
        "batch": args.batch,
        "classes": args.classes,
        "total_tokens": args.tokens,
        "seconds_per_step": {v: round(t, 4) for v, t in median.items()},
        "ratio_vs_kv_fixed": {v: round(t / base, 3) for v, t in median.items()},
        "bookkeeping": round(median["adapt_pruning_mask"] / median["adapt_pruning_no_bookkeeping"] - 1, 3),
        "gflops_forward": gflops,
        "targets": {
            "bookkeeping <= 0.10": median["adapt_pruning_mask"]
            <= 1.10 * median["adapt_pruning_no_bookkeeping"],
            "adapt_pruned <= kv_fixed": median["adapt_pruned"] <= base * 1.0,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["micro", "vitb16"], choices=["micro", "vitb16"])
    ap.add_argument("--tokens", type=int, default=32, help="T: total live tokens (Adapt's T_target)")
    ap.add_argument("--batch", type=int, default=4, help="seed 003 §4.1: batch 4")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-k", type=int, default=5, help="steps between pruning steps in the pruning variants")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {
        "benchmark": "adapt step time and FLOPs",
        "threads": args.threads,
        "results": [bench(m, args) for m in args.models],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
