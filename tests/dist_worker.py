"""Worker for tests/test_training_distributed.py: two CPU processes under `accelerate launch`.

Every process builds the same tiny model from the same seed, takes its own half of one batch and
does one SGD step, averaging gradients with `madapt.training.Processes.mean_grads` as the continual
engine and ADAT do; each rank then saves its weights. Rank 0
also saves the initial weights and a plain single-process step on the whole batch, which DDP's
gradient averaging must reproduce (equal shards: mean of shard means = mean over the batch).

Usage: dist_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from safetensors.torch import save_file

from madapt.training import build_optimizer, join_processes, seed_everything

LR = 0.5
BATCH = 8


def build_model() -> torch.nn.Module:
    seed_everything(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=gen), torch.randint(0, 3, (BATCH,), generator=gen)


def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def main(out_dir: Path) -> None:
    procs = join_processes()
    rank, world = procs.rank, procs.world
    assert world == 2, f"expected 2 processes, got {world}"
    model = build_model()
    initial = weights(model)
    optimizer = build_optimizer(model.parameters(), "sgd", lr=LR, momentum=0.0)
    x, y = full_batch()
    shard = procs.shard(BATCH)
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model, (x[shard.start : shard.stop], y[shard.start : shard.stop])).backward()
    procs.mean_grads(model.parameters())
    optimizer.step()
    save_file(weights(model), str(out_dir / f"rank{rank}.safetensors"))

    if procs.is_main:
        state = AcceleratorState()
        meta = {"distributed_type": state.distributed_type.name, "backend": state.backend, "world": world}
        (out_dir / "meta.json").write_text(json.dumps(meta))
        save_file(initial, str(out_dir / "initial.safetensors"))
        reference = build_model()
        ref_opt = torch.optim.SGD(reference.parameters(), lr=LR)
        loss_fn(reference, (x, y)).backward()
        ref_opt.step()
        save_file(weights(reference), str(out_dir / "single_process.safetensors"))
    procs.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
