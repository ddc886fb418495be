"""How the multi-process tests start a program: one process, or several under `accelerate launch`."""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(processes: int, *args: str) -> list[str]:
    """``python *args`` for one process, else under accelerate launch on a free port.

    ``--multi_gpu`` is accelerate's torchrun path; on CPU madapt joins it with gloo (training.py).
    """
    if processes == 1:
        return [sys.executable, *args]
    accelerate = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [sys.executable, *accelerate, "--main_process_port", str(free_port()), *args]


def madapt_run(processes: int, out: str, resume: bool = False) -> list[str]:
    """``madapt run cfg.yaml --out OUT [--resume]`` in ``processes`` processes."""
    return launch(
        processes, "-m", "madapt.cli", "run", "cfg.yaml", "--out", out, *(["--resume"] if resume else [])
    )
