"""`dcsl train RUN.yaml`: tokenize (or reuse) the corpus, then train and evaluate one run.

The YAML file holds `data:` (the corpus and tokenizer, as for `dcsl tokenize`), `run:` (a
`RunConfig`: model, tokens, unique_tokens, batch, optimiser, backend...) and optionally `store:`.
Both sections are checked before any work starts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.cli import app, fail
from pipeline.cli.data_commands import DEFAULT_STORE, SECTION as DATA_SECTION
from scaling.units import format_quantity

SECTION = "run"


@app.command("train")
def train_command(
    config: Path = typer.Argument(..., help="YAML file with 'data:' (corpus, tokenizer) and 'run:' (model, tokens, ...) sections."),
    store: Path | None = typer.Option(None, "--store", help="Store root; default: the file's 'store:' or ./store."),
    processes: int | None = typer.Option(None, "--processes", help="Ranks to start on this machine (overrides run.processes)."),
) -> None:
    """Train and evaluate one run (resuming from its latest checkpoint), then print its record."""
    # The trainer (torch, tokenizers, datasets) loads only when a run is asked for.
    from pipeline.config_files import read_section, read_yaml
    from stages.artifacts import is_complete
    from stages.data import TokenData
    from stages.launch import TeardownWarning, WorkersFailed, check_fits_data, check_resumable, run_path, train
    from stages.run_config import RunConfig
    from stages.tokenize import TokenizeConfig, tokenize
    from stages.train import RunDiverged

    document = read_yaml(config)
    data_config = read_section(document, DATA_SECTION, TokenizeConfig, config, "the corpus and tokenizer settings")
    run_settings = dict(document.get(SECTION) or {}) if isinstance(document.get(SECTION), dict) else document.get(SECTION)
    if processes is not None:
        if processes < 1:
            fail("--processes", f"{processes} must be at least 1")
        run_settings = {**(run_settings or {}), "processes": processes}
    run_config = read_section({SECTION: run_settings}, SECTION, RunConfig, config, "the model, tokens and unique_tokens of the run")
    store_root = store or Path(document.get("store") or DEFAULT_STORE)

    console = Console(stderr=True)
    with console.status("tokenizing the corpus (or reusing it)"):
        data_path = tokenize(data_config, store_root)
    run_dir = run_path(run_config, data_path, store_root)
    reused = is_complete(run_dir)
    if not reused:  # data-dependent checks fail here, before the progress bar draws anything
        check_fits_data(run_config, TokenData(data_path))
        check_resumable(run_config, run_dir, run_config.processes)
    columns = (
        TextColumn("training {task.fields[name]}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=True, disable=reused) as progress:
        task = progress.add_task("train", total=None, name=run_config.name, status="starting")

        def show(record: dict, total: int) -> None:
            status = f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s"
            progress.update(task, completed=record["step"], total=total, status=status)

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TeardownWarning)
                run_dir = train(run_config, data_path, store_root, progress=show)
        except RunDiverged as err:
            typer.echo(f"error: {err}; recorded in {run_dir / 'failed.json'}", err=True)
            raise typer.Exit(1) from err
        except WorkersFailed as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from err
    _show_warnings(caught, TeardownWarning)
    _summarise(run_dir, reused)


def _show_warnings(caught: list[warnings.WarningMessage], ours: type[Warning]) -> None:
    """Print the `ours` warnings as `warning: ...` lines on stderr; hand the others back to Python's display."""
    for warning in caught:
        if issubclass(warning.category, ours):
            typer.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


def _summarise(run_dir: Path, reused: bool) -> None:
    from stages.record import read_record

    record = read_record(run_dir)
    typer.echo(f"{'reused' if reused else 'wrote'} {run_dir}")
    typer.echo(
        f"val loss {record.val_loss:.4f}  train loss {record.train_loss:.4f}  "
        f"N {format_quantity(record.params)} ({format_quantity(record.params_non_embedding)} non-embedding)  "
        f"D {format_quantity(record.tokens)}  U {format_quantity(record.unique_tokens)}  epochs {record.epochs:.3g}\n"
        f"FLOPs {record.flops:.3e} (6ND)  {record.tokens_per_s:,.0f} tokens/s"
        + (f"  MFU {record.mfu:.1%}" if record.mfu else "")
        + f"  {record.train_seconds:.1f} s training, {record.world_size} rank(s), {record.backend}"
        + (f"\nW&B {record.wandb_dir}" if record.wandb_dir else "")
    )
