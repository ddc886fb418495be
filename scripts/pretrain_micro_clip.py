"""Pretrain the micro CLIP on the procedural world and write it to ``assets/micro_clip``.

    PYTHONPATH=src python scripts/pretrain_micro_clip.py --steps 4000 --out src/madapt/assets/micro_clip

CPU, deterministic given --seed and --threads. Contrastive loss of CLIP (Radford et al. 2021) with
a learnable temperature; captions that are identical within a batch are positives of each other
(soft targets spread over them), so the frequent short captions ("the letter k") do not teach the
model to separate images that share a description. AdamW, linear warm-up then cosine decay.
Writes config.json, weights.safetensors (fp32), vocab.json and README.md (how it was made); with
--checkpoint-dir, the weights are also written every --save-every steps so that a long run can be
inspected while it trains. ``scripts/calibrate_micro.py --readme`` then adds the calibration table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from madapt.backbones.micro import (
    MicroTokenizer,
    build_micro_model,
    images_to_tensor,
    micro_config,
)
from madapt.data.synthetic import pretraining_batches, vocabulary_words


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, captions: list[str]
) -> torch.Tensor:
    """Symmetric InfoNCE with identical captions as shared positives."""
    logits = scale * img @ txt.T
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions])
    same = (key[:, None] == key[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def write_assets(out: Path, model: torch.nn.Module, config: dict, tokenizer: MicroTokenizer) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "weights.safetensors.tmp"))
    (out / "weights.safetensors.tmp").replace(out / "weights.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "vocab.json").write_text(json.dumps(tokenizer.to_json(), indent=1) + "\n")


def readme(summary: dict, n_params: int) -> str:
    s = summary
    return f"""# micro CLIP (bundled)

An open_clip `CLIP` ({n_params / 1e6:.2f} M parameters: 32 px ViT, patch 8, width 128, 4 layers;
text transformer width 128, 4 layers, context 20, closed word-level vocabulary of `vocab.json`;
embedding dim 128), pretrained from scratch on the procedural captioned world of
`madapt.data.synthetic`. Loaded by `madapt.backbones.micro.load_micro_clip()`.

## How it was made

    PYTHONPATH=src python scripts/pretrain_micro_clip.py \\
        --steps {s["steps"]} --batch-size {s["batch_size"]} --warmup {s["warmup"]} \\
        --seed {s["seed"]} --threads {s["threads"]} --out src/madapt/assets/micro_clip

- {s["steps"]} steps at batch {s["batch_size"]} ({s["steps"] * s["batch_size"]:,} generated pairs),
  AdamW lr {s["lr"]} (warm-up {s["warmup"]} steps, cosine), weight decay 0.1 on matrices,
  learnable temperature (final 1/T {s["final_inv_temperature"]}),
  identical captions in a batch are shared positives.
- {s["seconds"] / 60:.1f} minutes on {s["threads"]} CPU threads of a machine shared with other jobs
  (data generation {100 * s["data_fraction"]:.0f} % of the time).
- Loss {s["first_loss"]} at the first step, {s["final_loss_ema"]} at the end (moving average).
- Weights: fp32 safetensors; keys match `open_clip.model.CLIP` exactly.

<!-- calibration -->
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint-dir", type=Path, default=None)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = MicroTokenizer(vocabulary_words(), context_length=20)
    config = micro_config(tokenizer.vocab_size, tokenizer.context_length)
    model = build_micro_model(config)
    mean, std = config["preprocess_cfg"]["mean"], config["preprocess_cfg"]["std"]
    # weight decay on weight matrices only (not on gains, biases, embeddings or the temperature)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * args.lr * (1 + math.cos(math.pi * t))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"micro CLIP: {n_params / 1e6:.2f} M parameters, vocab {tokenizer.vocab_size}", flush=True)
    stream = pretraining_batches(args.seed, args.batch_size)
    start, data_time, first_loss, ema = time.time(), 0.0, None, None
    model.train()
    for step in range(args.steps):
        t0 = time.time()
        images, captions = next(stream)
        data_time += time.time() - t0
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        img = model.encode_image(images_to_tensor(images, mean, std), normalize=True)
        txt = model.encode_text(tokenizer(captions), normalize=True)
        loss = contrastive_loss(img, txt, model.logit_scale.exp(), captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        first_loss = loss.item() if first_loss is None else first_loss
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % args.log_every == 0 or step == 0:
            el = time.time() - start
            print(
                f"step {step + 1}/{args.steps} loss {loss.item():.3f} ema {ema:.3f} "
                f"1/T {model.logit_scale.exp().item():.1f} lr {lr_at(step):.2e} "
                f"{el:.0f}s data {100 * data_time / el:.0f}%",
                flush=True,
            )
        if args.checkpoint_dir and (step + 1) % args.save_every == 0:
            write_assets(args.checkpoint_dir / f"step{step + 1}", model, config, tokenizer)
    elapsed = time.time() - start
    write_assets(args.out, model, config, tokenizer)
    summary = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "threads": args.threads,
        "lr": args.lr,
        "warmup": args.warmup,
        "parameters": n_params,
        "seconds": round(elapsed),
        "data_fraction": round(data_time / elapsed, 3),
        "first_loss": round(first_loss, 3),
        "final_loss_ema": round(ema, 3),
        "final_inv_temperature": round(model.logit_scale.exp().item(), 2),
    }
    (args.out / "README.md").write_text(readme(summary, n_params))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
