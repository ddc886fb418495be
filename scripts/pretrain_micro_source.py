"""Pretrain the micro source classifier of visual prompting (seed 000 ch. 6, micro version).

A timm ResNet (the ``madapt-tiny-resnet50`` preset widened to channels 16-128, 0.57 M parameters)
is trained from scratch on the 116-class procedural source world of `madapt.data.vp` and written
as safetensors + config.json + README.md:

    PYTHONPATH=src python scripts/pretrain_micro_source.py --out src/madapt/assets/micro_source
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from madapt.backbones.classifier import load_classifier
from madapt.data.vp import SOURCE_CLASSES, ImageArray, source_split
from madapt.runs import save_tensors, seed_everything
from madapt.training import build_optimizer, warmup_cosine

PRESET = "madapt-tiny-resnet50"
TIMM_KWARGS = {"num_classes": len(SOURCE_CLASSES), "channels": [16, 32, 64, 128], "stem_width": 16}


def normalise(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageArray, mean: tuple, std: tuple) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data), 512):
        x, y = data.batch(torch.arange(start, min(start + 512, len(data))))
        correct += int((model(normalise(x, mean, std)).argmax(1) == y).sum())
    return 100.0 * correct / len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-per-class", type=int, default=120)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    t0 = time.time()
    train = ImageArray(*source_split("train", args.train_per_class, args.seed))
    test = ImageArray(*source_split("test", args.test_per_class, args.seed))
    t_data = time.time() - t0
    backbone = load_classifier(PRESET, **TIMM_KWARGS)
    model, mean, std = backbone.model, backbone.mean, backbone.std
    steps_per_epoch = -(-len(train) // args.batch_size)
    opt = build_optimizer(model.parameters(), "adamw", lr=args.lr, weight_decay=0.05)
    sched = warmup_cosine(opt, steps_per_epoch // 2, args.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for start in range(0, len(train), args.batch_size):
            x, y = train.batch(order[start : start + args.batch_size])
            # Random flips/shifts would change letter identity; mild brightness jitter only.
            x = (x * (0.8 + 0.4 * torch.rand(len(x), 1, 1, 1, generator=gen))).clamp_(0, 1)
            loss = F.cross_entropy(model(normalise(x, mean, std)), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
        print(
            f"epoch {epoch + 1}: loss {total / len(train):.3f}  test acc "
            f"{accuracy(model, test, mean, std):.1f}%  ({time.time() - t0:.0f} s)",
            flush=True,
        )
    train_acc, test_acc = accuracy(model, train, mean, std), accuracy(model, test, mean, std)
    minutes = (time.time() - t0) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    save_tensors(args.out / "weights.safetensors", model.state_dict())
    config = {
        "preset": PRESET,
        "timm_kwargs": TIMM_KWARGS,
        "classes": list(SOURCE_CLASSES),
        "input_size": list(backbone.input_size),
        "mean": list(mean),
        "std": list(std),
        "train_accuracy": round(train_acc, 2),
        "test_accuracy": round(test_acc, 2),
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    (args.out / "README.md").write_text(
        f"""# micro source classifier (bundled)

The source model of the micro visual-prompting benchmark (`madapt run vp/micro_otlm`): timm's
`ResNet` (the `{PRESET}` preset with channels 16-32-64-128, {n_params / 1e6:.2f} M parameters,
32 px input, ImageNet mean/std) trained from scratch on the {len(SOURCE_CLASSES)} classes of
`madapt.data.vp.SOURCE_CLASSES` (80 colour × shape objects, 26 capital letters, 10 printed digits).
Loaded as backbone `micro-source` (`madapt.data.vp.load_micro_source`).

## How it was made

    PYTHONPATH=src python scripts/pretrain_micro_source.py --out src/madapt/assets/micro_source \\
        --train-per-class {args.train_per_class} --epochs {args.epochs} --batch-size {args.batch_size} \\
        --lr {args.lr} --seed {args.seed} --threads {args.threads}

- {len(train)} generated training images ({args.train_per_class} per class), {args.epochs} epochs,
  AdamW lr {args.lr} (warm-up half an epoch, cosine), weight decay 0.05, label smoothing 0.1.
- {minutes:.1f} minutes on {args.threads} CPU threads of a machine shared with other jobs
  (data generation {t_data:.0f} s).
- Source accuracy: train {train_acc:.1f} %, held-out test ({args.test_per_class} per class) {test_acc:.1f} %.
- Weights: fp32 safetensors; keys match timm's `ResNet` exactly.
""",
        encoding="utf-8",
    )
    print(json.dumps({"minutes": round(minutes, 2), "train_accuracy": train_acc, "test_accuracy": test_acc}))


if __name__ == "__main__":
    main()
