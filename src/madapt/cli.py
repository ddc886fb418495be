"""`madapt` command line: run | demo | list | report | data check | data download.

User mistakes (`UserError`) are printed as one line on stderr with exit code 2 and nothing written;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from madapt.errors import ConfigError, UserError, closest

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Adapt pretrained foundation models cheaply (continual CLIP, prompts, label maps, tokenizers).",
)
data_app = typer.Typer(no_args_is_help=True, help="Check (or download) real datasets on disk.")
app.add_typer(data_app, name="data")

LISTABLE = {
    "methods": "method",
    "datasets": "dataset",
    "backbones": "backbone",
    "mappers": "mapper",
    "recipes": "recipe",
}


def _console() -> Console:
    """stdout console; redirected to a file or a CI log, tables get 160 columns instead of rich's 80,
    so a report table stays one line per row (COLUMNS, when set, still wins)."""
    probe = Console()
    return probe if probe.is_terminal or "COLUMNS" in os.environ else Console(width=160)


def _default_out(config: str) -> Path:
    stem = Path(config).with_suffix("").as_posix().replace("/", "-")
    return Path("runs") / stem


@app.command()
def run(
    config: str = typer.Argument(..., help="A YAML file or a preset name (see `madapt list presets`)."),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-5."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out."),
) -> None:
    """Run one experiment and write its run folder (config, log, checkpoints, results, report)."""
    from madapt.recipes import run_experiment

    run_experiment(config, list(overrides or []), out or _default_out(config), resume, _console())


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder of the demo."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted demo."),
) -> None:
    """The embedded micro benchmark: offline, minutes on a laptop CPU."""
    from madapt.recipes import run_experiment

    run_experiment("demo/default", [], out, resume, _console())


@app.command("list")
def list_(
    what: str = typer.Argument(..., help="methods | datasets | backbones | presets | mappers | recipes"),
) -> None:
    """List registered names."""
    from madapt import catalog
    from madapt.config import preset_names
    from madapt.errors import UnknownNameError, closest
    from madapt.registry import names

    catalog.load_all()
    if what == "presets":
        items = preset_names()
    elif what in LISTABLE:
        items = names(LISTABLE[what])
    else:
        options = [*LISTABLE, "presets"]
        raise UnknownNameError(
            f"list '{what}'", "is not listable" + closest(what, options), "one of: " + ", ".join(options)
        )
    for item in items:
        typer.echo(item)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A finished run folder.")) -> None:
    """Print the results table of a finished run again (and rewrite its report.md)."""
    from madapt.recipes import rerender_report

    rerender_report(run_dir, _console())


@data_app.command("check")
def data_check(
    collection: str = typer.Argument(..., help="mtil | cil | vp | coop"),
    root: Path = typer.Option(..., "--root", help="The data_root folder."),
) -> None:
    """List which datasets of a collection are present under --root and the layout expected."""
    from madapt.data import mtil, vp_real

    collections = ("mtil", "cil", "vp", "coop")
    if collection not in collections:
        raise ConfigError(
            f"data collection '{collection}'",
            "is unknown",
            "mtil, cil, vp or coop" + closest(collection, collections),
        )
    if collection == "coop":
        from madapt.data.coop import check_coop

        rows = check_coop(root)
    else:
        rows = vp_real.check_layout(root) if collection == "vp" else mtil.check_layout(collection, root)
    missing = 0
    for name, ok, message in rows:
        missing += not ok
        typer.echo(f"{'ok     ' if ok else 'MISSING'} {name}: {message}")
    if missing:
        raise typer.Exit(code=1)


@data_app.command("download")
def data_download(
    collection: str = typer.Argument(..., help="mtil | cil"),
    root: Path = typer.Option(..., "--root", help="The data_root folder (created if missing)."),
    only: str = typer.Option("", "--only", help="Comma-separated dataset keys, e.g. dtd,eurosat."),
) -> None:
    """Download the missing datasets of a collection with torchvision's downloaders (needs network;
    `madapt run` itself never downloads)."""
    from madapt.data.mtil import download

    def show(name: str, ok: bool, message: str) -> None:
        typer.echo(f"{'ok    ' if ok else 'FAILED'} {name}: {message}")

    rows = download(collection, root, [k for k in only.split(",") if k] or None, report=show)
    if not all(ok for _, ok, _ in rows):
        raise typer.Exit(code=1)


def main() -> None:
    try:
        app()
    except UserError as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
