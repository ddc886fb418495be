"""Time, memory and storage of ConDU's merge on ViT-B/16-sized deltas (issue 13's benchmark).

Eleven random delta models with the shapes of open_clip's ViT-B-16 (every parameter but the
temperature, 149.6 M values) go through ConDU's loop as the method runs it: at session t the stored
t - 1 tasks are decoupled and unified again with the new delta (`fusion.remerge`), then every
expert is decoupled once (what evaluation rebuilds). Reported, all measured in this run:

- seconds of each session's merge and of decoupling all its experts (appendix I measures one
  session: 3.72 s unify + 0.64 s decouple for LoRA on a 4090; target here: the last session's
  merge + decouple-all <= 10 s on 2 CPU cores);
- peak extra resident memory of the last merge over the stored state + the new delta, in units of
  one model (target <= 2);
- mask bits per parameter per task (target <= 1) and what zlib adds on top of the bit packing;
- aggregation inference cost on the micro CLIP: seconds per test batch of ConDU's aggregation
  (pretrained + top-4 experts) relative to one model.

    PYTHONPATH=src python benchmarks/condu_fusion_bench.py [--tasks 11] [--scale 1.0]

``--scale`` shrinks every tensor (for a quick look); the targets are about scale 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
import zlib

import torch


def shapes(scale: float) -> dict[str, torch.Size]:
    from madapt.backbones.clip import load_clip

    model = load_clip("ViT-B-16").model
    out = {n: p.shape for n, p in model.named_parameters() if n != "logit_scale"}
    del model
    if scale < 1.0:
        out = {n: torch.Size([max(1, int(s[0] * scale)), *s[1:]]) if len(s) else s for n, s in out.items()}
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRSS:
    """Samples the resident set every 5 ms while the block runs (ru_maxrss never goes down)."""

    def __enter__(self):
        self.peak, self.done = rss_mb(), False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.done:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()


def fusion_figures(tasks: int, scale: float) -> dict:
    from madapt.continual import fusion

    torch.manual_seed(0)
    spec = shapes(scale)
    n_params = sum(s.numel() for s in spec.values())
    model_mb = n_params * 4 / 2**20
    unified, masks, rescalers = {}, [], torch.zeros(0)
    sessions = []
    for t in range(tasks):
        # a fine-tuning delta: small, dense, signs partly shared across tasks
        shared = torch.Generator().manual_seed(1234)
        delta = {}
        for n, s in spec.items():
            common = torch.randn(s, generator=shared)
            delta[n] = 1e-4 * (0.5 * common + torch.randn(s))
        before = rss_mb()
        with PeakRSS() as peak:
            start = time.perf_counter()
            unified, masks, rescalers = fusion.remerge(unified, masks, rescalers, delta)
            merge_s = time.perf_counter() - start
        del delta
        start = time.perf_counter()
        for i in range(t + 1):  # what evaluation rebuilds after the merge, one expert at a time
            expert = fusion.decouple(unified, masks[i], rescalers[i])
            del expert
        decouple_s = time.perf_counter() - start
        sessions.append(
            {
                "session": t + 1,
                "merge_s": round(merge_s, 2),
                "decouple_all_s": round(decouple_s, 2),
                "peak_extra_models": round((peak.peak - before) / model_mb, 3),
            }
        )
        print(json.dumps(sessions[-1]), flush=True)
    packed = fusion.mask_bytes(masks)
    sample = b"".join(m.numpy().tobytes() for m in list(masks[-1].values())[:20])
    last = sessions[-1]
    return {
        "parameters": n_params,
        "tasks": tasks,
        "sessions": sessions,
        "last_session_merge_plus_decouple_s": round(last["merge_s"] + last["decouple_all_s"], 2),
        "all_sessions_merge_s": round(sum(s["merge_s"] for s in sessions), 2),
        "peak_extra_models_max": max(s["peak_extra_models"] for s in sessions),
        "mask_bits_per_parameter_per_task": round(8 * packed / (n_params * tasks), 4),
        "zlib_ratio_on_packed_masks": round(len(zlib.compress(sample, 6)) / len(sample), 3),
        "storage_mb": {
            "unified": round(fusion.tensor_bytes(unified) / 2**20, 1),
            "masks": round(packed / 2**20, 1),
            "individual_experts": round(tasks * model_mb, 1),
        },
        "targets_met": last["merge_s"] + last["decouple_all_s"] <= 10.0
        and max(s["peak_extra_models"] for s in sessions) <= 2.0
        and 8 * packed / (n_params * tasks) <= 1.0 + 1e-3,
    }


def aggregation_figures(rounds: int = 5) -> dict:
    """Seconds per eval batch: ConDU's aggregation over 6 micro tasks vs one model's logits."""
    import numpy as np

    from madapt.backbones.micro import load_micro_clip
    from madapt.continual.context import Context, TrainSettings
    from madapt.continual.methods.condu import ConDU, ConDUConfig
    from madapt.continual.tasks import ArrayDataset, Task

    torch.manual_seed(0)
    backbone = load_micro_clip()
    rng = np.random.default_rng(0)
    size = backbone.image_size

    def data(n):
        images = rng.integers(0, 255, size=(n, size, size, 3)).astype(np.uint8)
        return ArrayDataset(images, np.arange(n) % 10, backbone.mean, backbone.std)

    tasks = [
        Task(f"t{t}", [f"c{t}_{c}" for c in range(10)], ["a {}."], data(100), data(250)) for t in range(6)
    ]
    settings = TrainSettings(iterations=[1] * 6, batch_size=8, lrs=[1e-4] * 6, eval_batch_size=250)
    ctx = Context(backbone=backbone, tasks=tasks, settings=settings, device=torch.device("cpu"))
    ctx.pretrained = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    method = ConDU(ConDUConfig())
    for t in range(6):
        ctx.task = t
        method.before_task(ctx)
        method.trainable_parameters(ctx.model)
        with torch.no_grad():
            for p in method.trainable_parameters(ctx.model):
                p.add_(1e-3 * torch.randn_like(p))
        method.after_task(ctx)
    images = tasks[0].test.batch(range(250))[0]
    ctx.task_id_known = False
    one, agg = [], []
    with torch.no_grad():
        method.logits(images, 0, ctx)  # build the experts and heads once, as an evaluation does
        ctx.clip_logits(method.expert(0, ctx), images, 0)
        for _ in range(rounds):
            start = time.perf_counter()
            ctx.clip_logits(method.expert(0, ctx), images, 0)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            method.logits(images, 0, ctx)
            agg.append(time.perf_counter() - start)
    one_s, agg_s = sorted(one)[rounds // 2], sorted(agg)[rounds // 2]
    return {
        "one_model_batch_s": round(one_s, 4),
        "aggregation_batch_s": round(agg_s, 4),
        "ratio": round(agg_s / one_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=11)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    report = {"fusion": fusion_figures(args.tasks, args.scale), "aggregation_micro": aggregation_figures()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
