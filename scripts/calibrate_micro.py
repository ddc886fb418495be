"""Calibrate the micro benchmark: can MTIL-micro tell continual-learning methods apart?

    PYTHONPATH=src python scripts/calibrate_micro.py [--weights W] [--styles] [--readme PATH]

Measures, for the micro CLIP on every MTIL-micro domain (ZSCL protocol, seed 000 §3.5):
- zero-shot accuracy (template ensemble, logit scale 100) on the test split;
- individual fine-tuning: the whole model, from the pretrained weights, on that domain alone
  (ZSCL's 1000 iterations of batch 64; AdamW lr 3e-4 — a small model trained from scratch needs a
  larger step than ViT-B/16's 1e-5 —, wd 0, 10 % warm-up then cosine, CE over the class texts of
  the first template, label smoothing 0.2, logit scale 100);
- sequential fine-tuning over the order1 domains with the same recipe, giving the accuracy matrix
  and ZSCL's Transfer / Avg / Last (`madapt.continual.metrics.mtil_metrics`).
With --styles, also zero-shot and fine-tuned accuracy on in-distribution-only and held-out-only
test images, which is what `DomainSpec.heldout_fraction` (the calibration knob) mixes.
Prints a JSON summary; with --readme, writes the tables below the ``<!-- calibration -->`` marker.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from madapt.backbones.clip import ClipBackbone, clip_logits, zero_shot_head
from madapt.backbones.micro import images_to_tensor, load_micro_clip
from madapt.continual.metrics import mtil_metrics
from madapt.data.synthetic import MTIL_MICRO_ORDERS, DomainSpec, make_split, micro_domains


@torch.no_grad()
def accuracy(bb: ClipBackbone, spec: DomainSpec, images: np.ndarray, labels: np.ndarray) -> float:
    bb.model.eval()
    head = zero_shot_head(bb, list(spec.classnames), list(spec.templates), ensemble=True)
    correct = 0
    for i in range(0, len(images), 500):
        feats = bb.encode_image(images_to_tensor(images[i : i + 500], bb.mean, bb.std))
        correct += (clip_logits(feats, head).argmax(1).numpy() == labels[i : i + 500]).sum()
    return 100.0 * correct / len(images)


def finetune(
    bb: ClipBackbone,
    spec: DomainSpec,
    images: np.ndarray,
    labels: np.ndarray,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
) -> None:
    """Fine-tune the whole model in place on one domain (ZSCL's recipe at micro scale)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(bb.model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    bb.model.train()
    tokens = bb.tokenize([spec.templates[0].format(c) for c in spec.classnames])
    for step in range(steps):
        progress = (step - warmup) / max(1, steps - warmup)
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(len(images), (batch,), generator=gen).numpy()
        img = bb.encode_image(images_to_tensor(images[idx], bb.mean, bb.std))
        txt = bb.encode_text(tokens)
        loss = F.cross_entropy(clip_logits(img, txt), torch.from_numpy(labels[idx]), label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    bb.model.eval()


def markdown(res: dict) -> str:
    lines = [
        "## Calibration (`scripts/calibrate_micro.py`)",
        "",
        f"Test splits of {res['n_test']} images per domain (seed {res['seed']}); fine-tuning "
        f"{res['steps']} steps, batch {res['batch']}, lr {res['lr']}; {res['minutes']:.1f} minutes.",
        "",
        "| domain (chance) | held-out share | zero-shot | fine-tuned | headroom |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, d in res["domains"].items():
        lines.append(
            f"| {name} ({d['chance']:.1f}) | {d['heldout_fraction']:.2f} | {d['zero_shot']:.1f} | "
            f"{d['finetuned']:.1f} | {d['finetuned'] - d['zero_shot']:.1f} |"
        )
    seq, zs = res["sequential"], res["zero_shot_metrics"]
    lines += [
        "",
        f"Sequential fine-tuning, {res['order']} ({' → '.join(seq['domains'])}):",
        "",
        "| | Transfer | Avg | Last |",
        "| --- | --- | --- | --- |",
        f"| zero-shot | {zs['transfer']:.1f} | {zs['avg']:.1f} | {zs['last']:.1f} |",
        f"| sequential fine-tuning | {seq['transfer']:.1f} | {seq['avg']:.1f} | {seq['last']:.1f} |",
        f"| individual fine-tuning (Last) | | | {seq['individual_last']:.1f} |",
        "",
        "Accuracy matrix (row = after training task i, column = domain j):",
        "",
    ]
    lines += [
        "| after \\ on | " + " | ".join(seq["domains"]) + " |",
        "|---" * (len(seq["domains"]) + 1) + "|",
    ]
    for name, row in zip(seq["domains"], seq["matrix"]):
        lines.append(f"| {name} | " + " | ".join(f"{a:.1f}" for a in row) + " |")
    return "\n".join(lines) + "\n"


def _splits(domain: str, args: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {
        "test": make_split(domain, "test", args.n_test, args.seed),
        "train": make_split(domain, "train", args.n_train, args.seed),
    }
    if args.styles:  # in-distribution-only and held-out-only test images
        for style, frac in (("in", 0.0), ("heldout", 1.0)):
            out[style] = make_split(domain, "test", args.n_test // 2, args.seed + 1, heldout_fraction=frac)
    return out


def individual(domain: str, args: argparse.Namespace) -> dict[str, float]:
    """Zero-shot and individually fine-tuned accuracy on one domain (one worker process)."""
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    base, spec, data = load_micro_clip(args.weights), micro_domains()[domain], _splits(domain, args)
    suffix = {k: "" if k == "test" else f"_{k}" for k in data if k != "train"}
    row = {"chance": 100.0 / spec.n_classes, "heldout_fraction": spec.heldout_fraction}
    row.update({"zero_shot" + sfx: accuracy(base, spec, *data[k]) for k, sfx in suffix.items()})
    finetune(base, spec, *data["train"], args.steps, args.batch, args.lr, args.seed)
    row.update({"finetuned" + sfx: accuracy(base, spec, *data[k]) for k, sfx in suffix.items()})
    return row


def sequential(args: argparse.Namespace) -> list[list[float]]:
    """Accuracy matrix of sequential fine-tuning over the order's domains (one worker process)."""
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model, specs, order = load_micro_clip(args.weights), micro_domains(), MTIL_MICRO_ORDERS[args.order]
    data = {d: _splits(d, args) for d in order}
    matrix = []
    for d in order:
        finetune(model, specs[d], *data[d]["train"], args.steps, args.batch, args.lr, args.seed)
        matrix.append([accuracy(model, specs[e], *data[e]["test"]) for e in order])
    return matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--order", default="order1", choices=sorted(MTIL_MICRO_ORDERS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render --readme from the JSON line a previous run printed",
    )
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    ap.add_argument("--styles", action="store_true")
    ap.add_argument("--no-sequential", action="store_true", help="individual fine-tuning only")
    ap.add_argument("--readme", type=Path, default=None)
    args = ap.parse_args()
    if args.from_json:
        res = json.loads(args.from_json.read_text().strip().splitlines()[-1])
        return _write_readme(args.readme, res) if args.readme else print(markdown(res))
    start = time.time()
    order = MTIL_MICRO_ORDERS[args.order]
    # Every job is seeded on its own, so results do not depend on --jobs.
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        seq_job = None if args.no_sequential else pool.submit(sequential, args)
        rows = dict(zip(order, pool.map(individual, order, [args] * len(order))))
        matrix = seq_job.result() if seq_job else None
    for d, row in rows.items():
        print(d, json.dumps({k: round(v, 1) for k, v in row.items()}), flush=True)
    if matrix is None:
        return
    seq = {k: v for k, v in mtil_metrics(matrix).items() if k in ("transfer", "avg", "last")}
    zs = mtil_metrics([[rows[d]["zero_shot"] for d in order]] * len(order))
    res = {
        "n_test": args.n_test,
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "order": args.order,
        "domains": rows,
        "sequential": {
            "domains": order,
            "matrix": matrix,
            **seq,
            "individual_last": float(np.mean([rows[d]["finetuned"] for d in order])),
        },
        "zero_shot_metrics": {k: zs[k] for k in ("transfer", "avg", "last")},
        "minutes": (time.time() - start) / 60,
    }
    print(json.dumps(res), flush=True)
    if args.readme:
        _write_readme(args.readme, res)


def _write_readme(readme: Path, res: dict) -> None:
    head = readme.read_text().split("<!-- calibration -->")[0]
    readme.write_text(head + "<!-- calibration -->\n\n" + markdown(res))


if __name__ == "__main__":
    main()
