"""The one path every experiment takes: config -> prepare -> run folder -> run -> results + report.

Order matters for the "nothing written on bad input" rule: the config is validated and the recipe
prepared (data found, weights loaded) before the run folder is created.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from madapt import catalog
from madapt.config import Recipe, load_config, read_yaml, to_yaml, validate
from madapt.errors import ConfigError, RunFolderError
from madapt.registry import get
from madapt.runs import RunFolder, open_run
from madapt.training import join_processes


def run_experiment(config: str, overrides: list[str], out: Path, resume: bool, console: Console) -> dict:
    """Run (or resume) one experiment into ``out`` and return its results."""
    catalog.load_all()
    cfg = load_config(config, overrides)
    text = to_yaml(cfg)
    recipe: Recipe = get("recipe", cfg.kind)
    procs = join_processes()  # rank 0 of 1 unless started by `accelerate launch`
    if procs.world > 1 and not recipe.multiprocess:
        raise ConfigError(
            "kind",
            f"'{cfg.kind}' runs in one process, not {procs.world}",
            "a plain `madapt run` (kinds continual and adat share work under accelerate launch)",
        )
    run = open_run(Path(out), text, resume)
    procs.barrier()  # every process has checked the folder before the main one writes into it
    if not procs.is_main:
        console = Console(quiet=True)
    if run.finished:  # --resume of a finished run: nothing left to do but show it
        results = run.read_results()
        if procs.is_main:
            recipe.report(results, run, console)
        return results
    prepared = recipe.prepare(cfg)
    if procs.is_main:
        run.start(text)
        run.log(
            f"{'resumed' if resume else 'started'}: madapt run {config} {' '.join(overrides)}".rstrip()
            + (f" ({procs.world} processes)" if procs.world > 1 else "")
        )
    results = recipe.run(cfg, prepared, run, console)
    if procs.is_main:
        run.write_results(results)
        recipe.report(results, run, console)
        run.log("finished")
    return results


def rerender_report(run_dir: Path, console: Console) -> None:
    """Print the table of a finished run and rewrite its report from ``results.json``."""
    catalog.load_all()
    run = RunFolder(Path(run_dir))
    if not run.finished:
        raise RunFolderError(str(run_dir), "holds no finished run (no results.json)", "a finished run folder")
    cfg = validate(read_yaml(run.config_path), str(run.config_path))
    recipe: Recipe = get("recipe", cfg.kind)
    recipe.report(run.read_results(), run, console)
