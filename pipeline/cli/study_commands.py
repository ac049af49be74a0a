"""`dcsl sweep`, `dcsl status`, `dcsl runs`: run a study to a fitted law, and read it back from the store."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.cli import app, fail
from pipeline.config import load_sweep
from pipeline.store import State, Store
from pipeline.submit import job_state
from pipeline.submit import jobs as submitted_jobs
from scaling.atomic import write_text_atomic
from stages.artifacts import SUCCESS
from stages.fit import runs_csv
from stages.launch import RECORD

err = Console(stderr=True)


@app.command("sweep")
def sweep_command(
    config: Path = typer.Argument(..., help="The sweep file (see configs/tiny.yaml)."),
    address: str | None = typer.Option(None, "--address", help="Join a running Ray cluster (e.g. auto or HOST:6379); default: start a local one."),
    explain: bool = typer.Option(False, "--explain", help="Say per step whether it will run and why; run nothing."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop impossible grid points with a warning instead of failing."),
    out: Path | None = typer.Option(None, "--out", help="Also copy the report (law.json, allocation.csv, plots, report.md) into this folder."),
    store: Path | None = typer.Option(None, "--store", help="Store root; default: the file's 'store:'."),
    wait_nodes: int = typer.Option(0, "--wait-nodes", min=0, help="With --address: wait for the head and this many nodes first (job scripts)."),
) -> None:
    """Run a sweep end to end (tokenize, train and evaluate every run, fit, report), resuming what is unfinished.

    Ctrl-C or SIGTERM (a SLURM preemption or time limit) stops it cleanly: running steps are marked
    interrupted, and the same command resumes them.
    """
    sweep = load_sweep(config)
    if store is not None:
        sweep = sweep.model_copy(update={"store": str(store)})
    if explain:
        _explain(sweep, skip_invalid)
        return
    from pipeline.dag import run_sweep  # Ray is imported only when a sweep really runs

    columns = (TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
               TextColumn("{task.fields[eta]}"))  # fmt: skip
    bar = Progress(*columns, console=err, transient=False)
    task = bar.add_task("runs", total=None, status="", eta="")

    logged: list[str] = []  # where stderr is no terminal (a log file, a SLURM job), one plain line per change

    def show(counts: dict) -> None:
        if "total" not in counts:
            status, eta = counts["status"], ""
        else:
            status = f"{counts['done']} done, {counts['running']} running, {counts['failed']} failed, {counts['pending']} pending"
            eta = f"ETA {counts['eta_seconds'] / 60:.1f} min" if counts["eta_seconds"] else ""
        if not err.is_terminal:
            line = f"runs: {status}" + (f" of {counts['total']}" if "total" in counts else "") + (f"; {eta}" if eta else "")
            if not logged or logged[-1].partition(";")[0] != line.partition(";")[0]:
                logged.append(line)
                err.print(line, highlight=False, soft_wrap=True)
            return
        bar.start()  # on the first report, once the config and the cluster have passed every check
        if "total" in counts:
            bar.update(task, completed=counts["done"] + counts["failed"], total=counts["total"], status=status, eta=eta)
        else:
            bar.update(task, status=status)

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = run_sweep(sweep, address=address, progress=show, skip_invalid=skip_invalid, wait_nodes=wait_nodes)
    except KeyboardInterrupt:
        err.print("interrupted: running steps were cancelled and are marked interrupted; run the same command to resume")
        raise typer.Exit(130) from None
    finally:
        if bar.live.is_started:
            bar.stop()
    done = sum(state is State.DONE for state in outcome.states.values())
    typer.echo(f"{done} of {len(outcome.states)} runs succeeded" + (f"; {len(outcome.failed)} did not:" if outcome.failed else ""))
    for failure in outcome.failed:
        typer.echo(f"  {failure['name']}: {failure['state']}: {failure['reason']}")
    if outcome.law_path:
        typer.echo(f"law: {outcome.law_path}")
    if outcome.report_path:
        typer.echo(f"report: {outcome.report_path}")
        if out is not None:
            _copy_report(outcome.report_path.parent, out)
            typer.echo(f"copied to {out}/")
    if outcome.fit_state is not None and outcome.fit_state is not State.DONE:
        typer.echo(f"the fit is {outcome.fit_state.value}; see dcsl status {sweep.store}")
    if not outcome.law_path:
        raise typer.Exit(1)


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _copy_report(source: Path, destination: Path) -> None:
    """Copy every file of the report folder, each written to a temporary name and renamed into place."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != SUCCESS:
            temporary = destination / f".{path.name}.tmp"
            shutil.copyfile(path, temporary)
            temporary.replace(destination / path.name)


def _explain(sweep, skip_invalid: bool) -> None:
    from pipeline.dag import sweep_steps

    store = Store(Path(sweep.store))
    skipped: list[str] = []
    steps = sweep_steps(sweep, skip_invalid=skip_invalid, skipped=skipped)
    for warning in skipped:
        err.print(f"[yellow]warning:[/] skipped {warning}", highlight=False)
    rows = [steps.tokenize, *(step for _, step in steps.runs.values())]
    will_run = 0
    for step in rows:
        decision = store.explain(step)
        will_run += decision.run
        typer.echo(f"{'run ' if decision.run else 'skip'}  {step.stage}/{step.name}: {decision.reason}")
    typer.echo(f"{will_run} of {len(rows)} steps will run; then the fit and the report over the runs that succeed")


@app.command("status")
def status_command(store: Path = typer.Argument(Path("store"), help="The store root.")) -> None:
    """Summarise a store: steps per stage and state, failures, the latest law (no Ray needed)."""
    if not store.is_dir():
        fail(f"store: {str(store)!r} does not exist")
    steps = Store(store).list_steps()
    table = Table("stage", *(state.value for state in State))
    for stage in sorted({info.stage for info in steps}):
        counts = [sum(info.stage == stage and info.state is state for info in steps) for state in State]
        table.add_row(stage, *(str(count) for count in counts))
    Console().print(table)
    for info in steps:
        if info.state in (State.FAILED, State.DEP_FAILED, State.INTERRUPTED, State.RUNNING):
            typer.echo(f"{info.state.value:<12} {info.stage}/{info.name}-{info.hash}: {info.detail}")
    laws = sorted(store.glob("fit/*/law.json"), key=lambda path: path.stat().st_mtime)
    if laws:
        typer.echo(f"latest law: {laws[-1]}")
    for job in submitted_jobs(store):
        state = job_state(job["job_id"])
        restarts = f", restarted {state['restarts']}x" if state.get("restarts") else ""
        reason = f" ({state['reason']})" if state.get("reason") not in (None, "", "None") else ""
        typer.echo(f"slurm job {job['job_id']}: {state['state']}{reason}{restarts}; log {job['log']}")


def finished_records(store: Path) -> list[dict]:
    """The run records of every finished run in the store, by name."""
    records = [json.loads(path.read_text()) for path in sorted(store.glob(f"train/*/{RECORD}")) if (path.parent / SUCCESS).exists()]
    return sorted(records, key=lambda record: record["name"])


@app.command("runs")
def runs_command(
    store: Path = typer.Argument(Path("store"), help="The store root."),
    parquet: bool = typer.Option(False, "--parquet", help="Write Parquet (needs --out) instead of CSV."),
    csv_format: bool = typer.Option(False, "--csv", help="Write CSV (the default)."),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of standard output."),
) -> None:
    """Export the finished runs as the table `dcsl fit` reads (params, tokens, unique_tokens, val_loss, ...)."""
    if parquet and csv_format:
        fail("--csv and --parquet: give one of them")
    if parquet and out is None:
        fail("--parquet: needs --out FILE (Parquet is binary)")
    if not store.is_dir():
        fail(f"store: {str(store)!r} does not exist")
    records = finished_records(store)
    if not records:
        fail(f"store: {str(store)!r} holds no finished runs")
    text = runs_csv(records)
    if parquet:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        temporary = out.with_name(f".{out.name}.tmp")
        pq.write_table(pacsv.read_csv(pa.py_buffer(text.encode())), temporary)
        temporary.replace(out)
    elif out is not None:
        write_text_atomic(out, text)
    else:
        typer.echo(text, nl=False)
