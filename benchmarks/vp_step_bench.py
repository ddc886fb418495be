"""Time per training step of a real-architecture VP preset on this machine (issue 15, evidence).

Runs ``vp/otlm_vitb22k_cifar10`` (ViT-B/16 with its 21,843-way head, Bahng et al.'s PadPrompter,
the thesis' SGD / warm-up + cosine) end to end through ``madapt run`` for one epoch, on randomly
initialised weights (same architecture and arithmetic as the pretrained checkpoint, nothing is
downloaded) and a generated ImageFolder tree of ``--images`` training images (10 classes), once per
precision. The epoch time of the history covers the training steps only (one epoch has no mapping
refresh), so seconds per step = epoch seconds / steps. Ratios: each precision against fp32, in the
same process. Prints JSON on stdout.

    PYTHONPATH=src python benchmarks/vp_step_bench.py --images 32 --batch-size 8 --threads 1
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from madapt.backbones.classifier import load_classifier
from madapt.recipes import run_experiment
from madapt.runs import save_tensors

PRESET = "vp/otlm_vitb22k_cifar10"
BACKBONE = "vit_base_patch16_224.augreg_in21k"


def write_tree(root: Path, per_split: dict[str, int], classes: int = 10, side: int = 64) -> None:
    """data_root/fixture/{train,val,test}/<class>/*.png: noise images around a colour per class."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for i in range(n):
            c = i % classes
            base = np.array([(37 * c) % 256, (91 * c) % 256, (53 * c) % 256], dtype=np.float64)
            image = np.clip(base + 40 * rng.standard_normal((side, side, 3)), 0, 255).astype(np.uint8)
            folder = root / "fixture" / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="training images")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tree(root / "data", {"train": args.images, "val": 10, "test": 10})
        torch.manual_seed(0)
        started = time.perf_counter()
        save_tensors(root / "vit.safetensors", load_classifier(BACKBONE).model.state_dict())
        build_s = time.perf_counter() - started
        out: dict[str, dict] = {}
        for precision in args.precisions.split(","):
            overrides = [
                f"weights={root / 'vit.safetensors'}",
                "data.name=fixture",
                f"data.data_root={root / 'data'}",
                "train.epochs=1",
                f"train.batch_size={args.batch_size}",
                "eval_batch_size=16",
                "variants=[otlm]",
                f"threads={args.threads}",
                f"precision={precision}",
                "device=cpu",
            ]
            began = time.perf_counter()
            results = run_experiment(
                PRESET, overrides, root / f"run_{precision}", False, Console(file=io.StringIO())
            )
            entry = results["variants"]["otlm"]
            steps = math.ceil(entry["train_images"] / args.batch_size)
            step_s = entry["history"][0]["seconds"] / steps
            out[precision] = {
                "seconds_per_step": round(step_s, 3),
                "seconds_per_image": round(step_s / args.batch_size, 4),
                "steps": steps,
                "run_seconds_total": round(time.perf_counter() - began, 1),
                "trainable_params": entry["trainable_params"],
                "loss": entry["history"][0]["loss"],
            }
    print(
        json.dumps(
            {
                "benchmark": f"{PRESET} one epoch on CPU (random-init {BACKBONE}, "
                "generated 64 px images -> 224)",
                "images": args.images,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
                "weights_build_and_save_s": round(build_s, 1),
                "per_precision": out,
                "ratio_vs_fp32": {
                    p: round(v["seconds_per_step"] / out["fp32"]["seconds_per_step"], 3)
                    for p, v in out.items()
                }
                if "fp32" in out
                else None,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
