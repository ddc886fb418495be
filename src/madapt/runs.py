"""Run folders, atomic writes, safetensors + JSON checkpoints, and resume.

A run folder holds ``config.yaml`` (the fully resolved config), ``log.txt``, ``checkpoints/`` and,
once finished, ``results.json`` and ``report.md``. An interrupted run resumes from its last
checkpoint; a folder that holds another run is never overwritten.

Checkpoints never pickle: tensors go to ``state.safetensors`` and everything else (the unit of work
reached, RNG states, optimizer hyperparameters, method bookkeeping) to ``state.json``. A checkpoint
is written into a temporary folder, renamed into place, and only then made current by an atomic
rewrite of ``checkpoints/latest.json``; a kill at any moment leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from madapt.errors import RunFolderError, WeightsError

# ---------------------------------------------------------------------------------------------
# Atomic files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------
# Nested state <-> (tensors, JSON skeleton)


def split_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested dicts/lists holding tensors into a flat tensor dict and a JSON skeleton.

    Tensors are replaced by ``{"__tensor__": key}``; dicts with non-string keys (optimizer
    state is keyed by int) keep their key types through ``{"__items__": [[key, value], ...]}``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            # clone: safetensors refuses tensors sharing storage
            tensors[path] = node.detach().to("cpu").contiguous().clone()
            return {"__tensor__": path}
        if isinstance(node, np.ndarray):
            return walk(torch.from_numpy(np.ascontiguousarray(node)), path)
        if isinstance(node, Mapping):
            if all(isinstance(k, str) for k in node):
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in node.items()}
            return {"__items__": [[k, walk(v, f"{path}.{k}" if path else str(k))] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node)]
        if isinstance(node, np.generic):
            return node.item()
        return node

    return tensors, walk(state, prefix)


def join_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `split_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        if set(skeleton) == {"__items__"}:
            return {k: join_state(v, tensors) for k, v in skeleton["__items__"]}
        return {k: join_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join_state(v, tensors) for v in skeleton]
    return skeleton


# ---------------------------------------------------------------------------------------------
# RNG and seeds


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; the one place a run's randomness starts from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states (the torch state is a uint8 tensor)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].to(torch.uint8))


# ---------------------------------------------------------------------------------------------
# Safetensors files


def save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a safetensors file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            tmp,
            metadata=dict(metadata) if metadata else None,
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file is a `WeightsError`."""
    if not Path(path).is_file():
        raise WeightsError(str(path), "no such file", "a .safetensors file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            str(path), f"cannot be read ({str(err).splitlines()[0][:80]})", "a valid .safetensors file"
        ) from None


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    unit: dict[str, Any]  # where the run stands, e.g. {"task": 3, "step": 400}
    state: Any  # nested dict with tensors inside (model delta, method, optimizer, rng ...)


class Checkpointer:
    """Keeps the latest checkpoint of a run in ``dir``; see the module docstring for atomicity."""

    def __init__(self, directory: Path, keep: int = 1) -> None:
        self.dir = Path(directory)
        self.keep = keep

    def _pointer(self) -> Path:
        return self.dir / "latest.json"

    def save(self, unit: Mapping[str, Any], state: Any, tag: str | None = None) -> Path:
        """Write a checkpoint and make it the latest; ``tag`` also names it (e.g. "task_start") so
        that it is kept, and loadable with ``load(tag)``, until another checkpoint takes the tag."""
        self.dir.mkdir(parents=True, exist_ok=True)
        latest = self._read_pointer()
        seq = (latest["seq"] + 1) if latest else 0
        name = f"ckpt-{seq:06d}"
        tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=f".{name}."))
        tensors, skeleton = split_state(state)
        save_file(tensors, str(tmp / "state.safetensors"))
        with open(tmp / "state.json", "w", encoding="utf-8") as fh:
            json.dump({"unit": dict(unit), "state": skeleton}, fh, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        final = self.dir / name
        if final.exists():  # left over from a kill between rename and pointer update
            shutil.rmtree(final)
        os.replace(tmp, final)
        tags = dict(latest.get("tags", {})) if latest else {}
        if tag is not None:
            tags[tag] = name
        atomic_write_json(self._pointer(), {"name": name, "seq": seq, "unit": dict(unit), "tags": tags})
        self._prune(keep_names={name, *tags.values()})
        return final

    def _read_pointer(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._pointer().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _prune(self, keep_names: set[str]) -> None:
        ckpts = sorted(p for p in self.dir.iterdir() if p.name.startswith(("ckpt-", ".ckpt-")))
        finished = [p for p in ckpts if p.name.startswith("ckpt-") and p.name not in keep_names]
        for old in finished[: max(0, len(finished) - max(0, self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in ckpts:
            if tmp.name.startswith(".ckpt-"):
                shutil.rmtree(tmp, ignore_errors=True)

    def load(self, tag: str | None = None) -> Checkpoint | None:
        """The latest checkpoint, or the one holding ``tag``; None if there is none."""
        pointer = self._read_pointer()
        if pointer is None:
            return None
        name = pointer["name"] if tag is None else pointer.get("tags", {}).get(tag)
        if name is None:
            return None
        folder = self.dir / name
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_tensors(folder / "state.safetensors")
        return Checkpoint(unit=meta["unit"], state=join_state(meta["state"], tensors))


# ---------------------------------------------------------------------------------------------
# Run folders


class RunFolder:
    """One experiment's folder. Create with `open_run`, which refuses to clobber other runs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    results_path = property(lambda self: self.path / "results.json")
    log_path = property(lambda self: self.path / "log.txt")
    report_path = property(lambda self: self.path / "report.md")
    checkpoints = property(lambda self: Checkpointer(self.path / "checkpoints"))

    @property
    def finished(self) -> bool:
        return self.results_path.is_file()

    def start(self, config_yaml: str) -> None:
        """Create the folder and write ``config.yaml`` (kept as is when resuming)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.config_path.is_file():
            atomic_write_text(self.config_path, config_yaml)

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp}  {message.rstrip()}\n")

    def write_results(self, results: Mapping[str, Any]) -> None:
        atomic_write_json(self.results_path, results)

    def read_results(self) -> dict[str, Any]:
        return json.loads(self.results_path.read_text(encoding="utf-8"))


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if diff:
                return diff
        return None
    return None if a == b else (path or "(top level)")


def open_run(path: Path, config_yaml: str, resume: bool) -> RunFolder:
    """Check that ``path`` may hold this run; writes nothing (call `RunFolder.start` for that).

    A folder holding another run (finished or not) needs ``--resume`` (same config) or a new
    ``--out``; ``--resume`` with a changed config is refused, naming the first key that differs.
    """
    import yaml  # local: only needed here

    run = RunFolder(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(str(path), "is a file", "a folder for the run (--out)")
    if run.config_path.is_file():
        old = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
        new = yaml.safe_load(config_yaml)
        state = "a finished run" if run.finished else "an unfinished run"
        if not resume:
            raise RunFolderError(
                str(path), f"already holds {state}", "--resume to continue it, or a new --out folder"
            )
        diff = _first_difference(old, new)
        if diff is not None:
            raise RunFolderError(
                f"{path}/config.yaml: {diff}",
                "differs from this run's config",
                "the same config to resume (or a new --out folder)",
            )
        return run
    if path.is_dir() and any(path.iterdir()):
        raise RunFolderError(
            str(path), "is a non-empty folder that holds no madapt run", "an empty or new folder (--out)"
        )
    if resume:
        raise RunFolderError(str(path), "--resume given but no run is there", "the folder of an earlier run")
    return run
