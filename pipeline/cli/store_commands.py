"""`dcsl status`, `dcsl runs`: read a study back from its store (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli import app, fail, store_runs


@app.command("status")
def status_command(store: Path = typer.Argument(Path("store"), help="The store root.")) -> None:
    """Summarise a store: steps per stage and state, failures, the latest law (no Ray needed)."""
    from pipeline.store import State, Store
    from pipeline.submit import job_state, jobs
    from stages.fit import LAW

    if not store.is_dir():
        fail("store", f"{str(store)!r} does not exist")
    steps = Store(store).list_steps()
    table = Table("stage", *(state.value for state in State))
    for stage in sorted({info.stage for info in steps}):
        counts = [sum(info.stage == stage and info.state is state for info in steps) for state in State]
        table.add_row(stage, *(str(count) for count in counts))
    Console().print(table)
    for info in steps:
        if info.state in (State.FAILED, State.DEP_FAILED, State.INTERRUPTED, State.RUNNING, State.DAMAGED):
            typer.echo(f"{info.state.value:<12} {info.stage}/{info.name}-{info.hash}: {info.detail}")
    for line in _contamination_lines(store, steps):
        typer.echo(line)
    fitted = [info.path / LAW for info in steps if info.stage == "fit" and info.state is State.DONE]
    laws = sorted((path for path in fitted if path.is_file()), key=lambda path: path.stat().st_mtime)
    if laws:
        typer.echo(f"latest law: {laws[-1]}")
    for job in jobs(store):
        state = job_state(job["job_id"])
        restarts = f", restarted {state['restarts']}x" if state.get("restarts") else ""
        reason = f" ({state['reason']})" if state.get("reason") not in (None, "", "None") else ""
        typer.echo(f"slurm job {job['job_id']}: {state['state']}{reason}{restarts}; log {job['log']}")


def _contamination_lines(store: Path, steps: list) -> list[str]:
    """Per finished corpus: its validation contamination, exact at the unique budgets of the runs trained on it."""
    import json

    from pipeline.cli.data_commands import contamination_line
    from pipeline.store import State
    from stages.contamination import shares_at
    from stages.record import finished_records

    corpora = [info for info in steps if info.stage == "tokenize" and info.state is State.DONE]
    records = finished_records(store).records if corpora else []
    lines = []
    for info in corpora:
        manifest = json.loads((info.path / "manifest.json").read_text())
        if "contamination" not in manifest:
            continue  # tokenized before contamination was measured
        budgets = sorted({record.unique_tokens for record in records if record.data_hash == info.hash})
        lines.append(f"tokenize/{info.name}-{info.hash}: " + contamination_line(manifest, shares_at(info.path, budgets)))
    return lines


@app.command("runs")
def runs_command(
    store: Path = typer.Argument(Path("store"), help="The store root."),
    parquet: bool = typer.Option(False, "--parquet", help="Write Parquet (needs --out) instead of CSV."),
    csv_format: bool = typer.Option(False, "--csv", help="Write CSV (the default)."),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of standard output."),
    curves: Path | None = typer.Option(
        None, "--curves", help="Instead, write the runs' loss curves (train loss per logged step, val loss during the run) "
        "to this file: .csv or .parquet."
    ),
) -> None:
    """Export the finished runs as the table `dcsl fit` reads (params, tokens, unique_tokens, val_loss, ...), or their loss curves."""
    from scaling.atomic import write_atomic, write_text_atomic
    from stages.fit import runs_csv

    if parquet and csv_format:
        fail("--csv and --parquet", "give one of them")
    if parquet and out is None:
        fail("--parquet", "needs --out FILE (Parquet is binary)")
    if curves is not None and curves.suffix not in (".csv", ".parquet"):
        fail("--curves", f"{str(curves)!r} must end in .csv or .parquet")
    if not store.is_dir():
        fail("store", f"{str(store)!r} does not exist")
    records = store_runs(store)
    if not records:
        fail("store", f"{str(store)!r} holds no finished runs")
    if curves is not None:
        _write_curves(store, records, curves)
        return
    text = runs_csv(records)
    if parquet:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        table = pacsv.read_csv(pa.py_buffer(text.encode()))
        write_atomic(out, lambda handle: pq.write_table(table, handle))
    elif out is not None:
        write_text_atomic(out, text)
    else:
        typer.echo(text, nl=False)


def _write_curves(store: Path, records: list, path: Path) -> None:
    """Write the runs' loss curves to `path` (CSV or Parquet by its suffix), atomically."""
    import csv
    import io

    from scaling.atomic import write_atomic, write_text_atomic
    from stages.curves import COLUMNS, store_curves

    rows = store_curves(store, records)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=pa.schema([(name, pa.string() if name in ("run", "run_hash") else
                                                                   pa.int64() if name in ("step", "tokens") else pa.float64())
                                                                  for name in COLUMNS]))  # fmt: skip
        write_atomic(path, lambda handle: pq.write_table(table, handle))
    else:
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: ("" if value is None else repr(value) if isinstance(value, float) else value) for key, value in row.items()}
                         for row in rows)  # fmt: skip
        write_text_atomic(path, text.getvalue())
    typer.echo(f"wrote {len(rows)} curve points of {len(records)} runs to {path}")
