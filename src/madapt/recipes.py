"""The one path every experiment takes: config -> prepare -> run folder -> run -> results + report.

Order matters for the "nothing written on bad input" rule: the config is validated and the recipe
prepared (data found, weights loaded) before the run folder is created.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from madapt import catalog
from madapt.config import Recipe, load_config, read_yaml, to_yaml, validate
from madapt.errors import RunFolderError
from madapt.registry import get
from madapt.runs import RunFolder, open_run


def run_experiment(config: str, overrides: list[str], out: Path, resume: bool, console: Console) -> dict:
    """Run (or resume) one experiment into ``out`` and return its results."""
    catalog.load_all()
    cfg = load_config(config, overrides)
    text = to_yaml(cfg)
    run = open_run(Path(out), text, resume)
    recipe: Recipe = get("recipe", cfg.kind)
    if run.finished:  # --resume of a finished run: nothing left to do but show it
        results = run.read_results()
        recipe.report(results, run, console)
        return results
    prepared = recipe.prepare(cfg)
    run.start(text)
    run.log(f"{'resumed' if resume else 'started'}: madapt run {config} {' '.join(overrides)}".rstrip())
    results = recipe.run(cfg, prepared, run, console)
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
