"""`dcsl sweep`: run a study end to end (tokenize, train and evaluate every run, fit, report), or explain it."""

from __future__ import annotations

import signal
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.cli import app
from pipeline.cli.study_options import checked_study_line, with_study_flags

err = Console(stderr=True)


@app.command("sweep")
@with_study_flags
def sweep_command(
    config: Path = typer.Argument(..., help="The sweep file (see configs/tiny.yaml)."),
    address: str | None = typer.Option(None, "--address", help="Join a running Ray cluster (e.g. auto or HOST:6379); default: start a local one."),
    explain: bool = typer.Option(False, "--explain", help="Say per step whether it will run and why; run nothing."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Drop impossible grid points with a warning instead of failing."),
    out: Path | None = typer.Option(None, "--out", help="Also copy the report (law.json, allocation.csv, plots, report.md) into this folder."),
    store: Path | None = typer.Option(None, "--store", help="Store root; default: the file's 'store:'."),
    wait_nodes: int = typer.Option(0, "--wait-nodes", min=0, help="With --address: wait for the head and this many nodes first (job scripts)."),
    study=None,
) -> None:
    """Run a sweep end to end (tokenize, train and evaluate every run, fit, report), resuming what is unfinished.

    With --rounds R --round-budget B --target-flops C: an active study. After the grid, R rounds each fit
    the runs so far and train the runs (within B FLOPs) that most shrink the spread of the answer at
    (C, U); each round's choice and its reason are in the store (suggest/), and the report shows the
    answer's intervals per round.

    Ctrl-C or SIGTERM (a SLURM preemption or time limit) stops it cleanly: running steps are marked
    interrupted, and the same command resumes them. Exit status: 0 every run finished and the law was
    fitted; 1 no law; 2 bad input (the config, the cluster, a store that can't be written); 3 some runs
    failed (the fit and a partial report cover the rest); 130 interrupted.
    """
    from pipeline.config import load_sweep

    sweep = load_sweep(config)
    if store is not None:
        sweep = sweep.model_copy(update={"store": str(store)})
    study_line = None if study is None else checked_study_line(sweep, study, Path(sweep.store))
    if explain:
        _explain(sweep, skip_invalid, study_line)
        return
    from pipeline.store import State
    from pipeline.sweep import run_sweep  # Ray is imported only when a sweep really runs

    columns = (TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
               TextColumn("{task.fields[eta]}"))  # fmt: skip
    bar = Progress(*columns, console=err, transient=False)
    task = bar.add_task("runs", total=None, status="", eta="")

    logged: list[str] = []  # where stderr is no terminal (a log file, a SLURM job), one plain line per change

    def show(counts: dict) -> None:
        status, eta = progress_text(counts)
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
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &` in a script)
    try:
        if study is None:
            outcome = run_sweep(sweep, address=address, progress=show, skip_invalid=skip_invalid, wait_nodes=wait_nodes)
        else:
            from pipeline.rounds import run_active_study

            outcome = run_active_study(sweep, study, address=address, progress=show, skip_invalid=skip_invalid,
                                       wait_nodes=wait_nodes)  # fmt: skip
    except KeyboardInterrupt:
        err.print("interrupted: running steps were cancelled and are marked interrupted; run the same command to resume")
        raise typer.Exit(130) from None
    finally:
        if bar.live.is_started:
            bar.stop()
    done = sum(state is State.DONE for state in outcome.states.values())
    typer.echo(f"{done} of {len(outcome.states)} runs succeeded" + (f"; {len(outcome.failed)} did not:" if outcome.failed else ""))
    for failure in outcome.failed:
        typer.echo(f"  {failure.name}: {failure.state}: {failure.reason}")
    for suggestion in getattr(outcome, "rounds", []):
        typer.echo(f"round {suggestion['round']}: {len(suggestion['runs'])} runs, {suggestion['budget_used']:.3g} of "
                   f"{suggestion['budget']:.3g} FLOPs: " + ", ".join(run["name"] for run in suggestion["runs"]))
    if getattr(outcome, "ended", ""):
        typer.echo(f"the rounds ended early: {outcome.ended}")
    if outcome.law_path:
        typer.echo(f"law: {outcome.law_path}")
    if outcome.report_path:
        typer.echo(f"report: {outcome.report_path}")
        if out is not None:
            _copy_report(outcome.report_path.parent, out)
            typer.echo(f"copied to {out}/")
    if outcome.fit_state is not None and outcome.fit_state is not State.DONE:
        reason = f" ({outcome.fit_reason})" if outcome.fit_reason else ""
        typer.echo(f"the fit is {outcome.fit_state.value}{reason}; see dcsl status {sweep.store}")
    if outcome.failed:
        raise typer.Exit(3)
    if not outcome.law_path:
        raise typer.Exit(1)


def progress_text(counts: dict) -> tuple[str, str]:
    """The status and the ETA (or "") shown for one progress report of the runner (`pipeline.runner.Progress`)."""
    if "total" not in counts:
        return counts["status"], ""
    status = f"{counts['done']} done, {counts['running']} running, {counts['failed']} failed, {counts['pending']} pending"
    return status, f"ETA {counts['eta_seconds'] / 60:.1f} min" if counts["eta_seconds"] else ""


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _copy_report(source: Path, destination: Path) -> None:
    """Copy every file of the report folder, each written atomically."""
    from scaling.atomic import copy_file_atomic
    from stages.artifacts import SUCCESS

    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != SUCCESS:
            copy_file_atomic(path, destination / path.name)


def _explain(sweep, skip_invalid: bool, study_line: str | None) -> None:
    """Say per step whether it will run; an active study's (`study_line`: what its rounds do) only up to its grid."""
    from pipeline.runner import explain
    from pipeline.store import Store
    from pipeline.sweep import sweep_graph

    skipped: list[str] = []
    graph = sweep_graph(sweep, skip_invalid=skip_invalid, skipped=skipped)
    for warning in skipped:
        err.print(f"[yellow]warning:[/] skipped {warning}", highlight=False)
    nodes = graph.nodes if study_line is None else [graph.tokenize, *graph.runs.values()]
    decisions = explain(nodes, Store(Path(sweep.store)))
    keyed = [(node, decision) for node, decision in decisions if decision is not None]
    for node, decision in keyed:
        typer.echo(f"{'run ' if decision.run else 'skip'}  {node.label}: {decision.reason}")
    later = [node.kind.stage for node, decision in decisions if decision is None]
    then = f"; then the {' and the '.join(later)} over the runs that succeed" if later else ""
    typer.echo(f"{sum(d.run for _, d in keyed)} of {len(keyed)} steps will run{then}")
    if study_line is not None:
        typer.echo(f"{study_line}; then the fit and the report")
        for line in _rounds_in_store(Store(Path(sweep.store)), sweep.name):
            typer.echo(line)


def _rounds_in_store(store, sweep_name: str) -> list[str]:
    """One line per round of this study found in the store (`suggest/<name>-round<k>-<hash>`): its state and,
    when finished, the runs it chose. The rounds' steps depend on the runs before them, so the study itself
    decides, when it runs, which of them it reuses."""
    import json
    import re

    from pipeline.store import State
    from stages.suggest import SUGGESTION

    lines = []
    for info in store.list_steps("suggest"):
        match = re.fullmatch(rf"{re.escape(sweep_name)}-round(\d+)", info.name)
        if match is None:
            continue
        where = f"suggest/{info.name}-{info.hash}"
        if info.state is State.DONE:
            chosen = json.loads((info.path / SUGGESTION).read_text())["runs"]
            lines.append(f"round {match[1]} in the store: done ({where}), chose {len(chosen)} run(s): "
                         + (", ".join(run["name"] for run in chosen) or "none"))
        else:
            lines.append(f"round {match[1]} in the store: {info.state.value} ({where})" + (f": {info.detail}" if info.detail else ""))
    return lines
