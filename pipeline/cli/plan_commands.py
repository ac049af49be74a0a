"""`dcsl plan SWEEP.yaml`: expand a sweep and show its runs, compute and estimated time; runs nothing.

Under `optimizer.schedule: wsd` it also shows the trunks (`pipeline.trunks`): per trunk, its
branches and where each starts its cooldown, and the compute with the trunks shared against that of
the same runs trained independently.

The estimated time of a run comes from finished runs in the store with the same model shape
(their run records: tokens/s, and the time outside training such as evaluation),
preferring those trained with as many ranks; a run whose shape the store has not seen gets none.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli import app
from pipeline.cli.study_options import with_study_flags
from scaling.errors import InputError
from scaling.units import format_quantity

if TYPE_CHECKING:  # the sweep schema (pydantic, scipy) loads when the command runs
    from pipeline.config import SweepConfig
    from pipeline.expand import RunSpec

CSV_COLUMNS = ("name", "model", "seed", "params", "params_non_embedding", "tokens", "unique_tokens", "epochs", "flops",
               "flops_full", "cpus", "gpus", "nodes", "estimated_seconds")  # fmt: skip


@app.command("plan")
@with_study_flags
def plan_command(
    sweep_file: Path = typer.Argument(..., help="The sweep YAML file."),
    store: Path | None = typer.Option(None, "--store", help="Store root; default: the file's 'store:'."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave impossible grid points out, with a warning."),
    as_csv: bool = typer.Option(False, "--csv", help="Print the run table as CSV."),
    study=None,
) -> None:
    """Expand a sweep into its runs and print them with total compute and estimated time, without running anything.

    With an active study's flags (`dcsl sweep --rounds ...`), also say what its rounds will do after the grid.
    """
    from pipeline.config import load_sweep
    from pipeline.expand import expand
    from pipeline.study import checked_plan
    from stages.pool_data import manifest_train_tokens

    sweep = load_sweep(sweep_file)
    store_root = store or Path(sweep.store)
    err = Console(stderr=True)
    with err.status("looking for the tokenized corpus"):
        corpus = tokenized_corpus(sweep, store_root)
    skipped: list[str] = []
    runs = expand(
        sweep, manifest_train_tokens(corpus) if corpus else None, vocab_size=corpus["tokenizer"]["vocab_size"] if corpus else None,
        skip_invalid=skip_invalid, skipped=skipped,
    )  # fmt: skip
    study_line = None if study is None else checked_plan(sweep, study, corpus["train"]["tokens"] if corpus else None)
    if corpus is None:
        err.print("note: the corpus is not tokenized yet; U is not checked against its size", highlight=False)
    for message in skipped:
        err.print(f"warning: skipped {message}", highlight=False, soft_wrap=True)
    speeds = observed_speeds(store_root)
    estimates = [estimate_seconds(run, speeds) for run in runs]
    if as_csv:
        _write_csv(runs, estimates)
    else:
        _print_table(sweep, runs, estimates, len(skipped))
    if study_line is not None:
        (err if as_csv else Console(width=max(120, Console().width))).print(study_line, highlight=False, soft_wrap=True)


def tokenized_corpus(sweep: SweepConfig, store: Path) -> dict | None:
    """The manifest of the sweep's finished tokenize artifact in `store`, or None if there is none yet."""
    from stages.artifacts import is_complete
    from stages.tokenize import STAGE, tokenize_path

    folder = store / STAGE
    if not any(folder.glob(f"{sweep.data.name}-*")):  # no artifact of this name: skip hashing the corpus
        return None
    try:
        path = tokenize_path(sweep.data, store)
    except InputError:  # a local corpus that is not there (yet): the sweep will say so when it runs
        return None
    return json.loads((path / "manifest.json").read_text()) if is_complete(path) else None


def observed_speeds(store: Path) -> dict[str, list[dict]]:
    """Finished runs' speeds by model shape: {shape key: [{tokens_per_s, overhead_s, world_size}, ...]}."""
    from stages.record import finished_records

    speeds: dict[str, list[dict]] = {}
    for record in finished_records(store).records:  # damaged runs give no estimate
        if record.shape is None or not record.tokens_per_s:
            continue  # a record of another format: no estimate from it
        speeds.setdefault(_shape_key(record.shape.model_dump()), []).append({
            "tokens_per_s": record.tokens_per_s,
            "overhead_s": max(0.0, (record.wall_seconds or 0.0) - (record.train_seconds or 0.0)),
            "world_size": record.world_size,
        })  # fmt: skip
    return speeds


def estimate_seconds(run: RunSpec, speeds: dict[str, list[dict]]) -> float | None:
    """The run's expected wall time from runs of the same shape (same world size preferred), or None."""
    seen = speeds.get(_shape_key(run.shape._asdict()))
    if not seen:
        return None
    same_world = [entry for entry in seen if entry["world_size"] == run.world_size] or seen
    rate = statistics.median(entry["tokens_per_s"] for entry in same_world)
    overhead = statistics.median(entry["overhead_s"] for entry in same_world)
    return run.tokens / rate + overhead


def _shape_key(shape: dict) -> str:
    return json.dumps(shape, sort_keys=True)


def format_duration(seconds: float) -> str:
    """A duration for people: 42s, 3m05s, 2h10m, 3d04h."""
    seconds = round(seconds)
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{(seconds % size) // small_size:02d}{small}"
    return f"{seconds}s"


def _resources(run: RunSpec) -> str:
    r = run.resources
    if not r.gpus:
        return f"{r.cpus} CPU"
    return f"{r.gpus} GPU" + (f" x {r.nodes}" if r.nodes > 1 else "")


def _print_ladder(sweep: SweepConfig, out: Console) -> None:
    """The sizes a `models: {ladder: ...}` produced: target, shape, exact count and learning rate."""
    if sweep.ladder() is None:
        return
    ladder, rungs = sweep.ladder()
    kind = "non-emb" if ladder.params == "non_embedding" else "total"
    rule = f"lr = {ladder.lr.peak:g} x (N / {format_quantity(ladder.lr.at)}) ^ {ladder.lr.exponent:.4g}"
    batch = ladder.batch
    if batch is not None:
        rule += f", batch = {format_quantity(batch.tokens)} x (N / {format_quantity(batch.at)}) ^ {batch.exponent:.4g} tokens"
    table = Table(title=f"size ladder: {len(rungs)} sizes, N {kind}, {rule}", title_justify="left")
    headers = ("model", "target", "layers", "width", "heads", f"N {kind}", "lr") + (() if batch is None else ("batch tokens",))
    for header in headers:
        table.add_column(header, justify="left" if header == "model" else "right")
    for rung in rungs:
        cells = (rung.name, format_quantity(rung.target), str(rung.layers), str(rung.width), str(rung.heads), f"{rung.params:,}", f"{rung.lr:.3g}")
        table.add_row(*cells, *(() if batch is None else (f"{rung.batch_tokens:,}",)))
    out.print(table)


def _print_table(sweep: SweepConfig, runs: list[RunSpec], estimates: list[float | None], skipped: int) -> None:
    table = Table(title=f"sweep {sweep.name}: {len(runs)} runs", title_justify="left")
    for header in ("run", "N", "N non-emb", "D", "U", "epochs", "FLOPs (6ND)", "resources", "est. time"):
        table.add_column(header, justify="left" if header in ("run", "resources") else "right")
    for run, seconds in zip(runs, estimates):
        table.add_row(
            run.name, format_quantity(run.params), format_quantity(run.params_non_embedding), format_quantity(run.tokens),
            format_quantity(run.unique_tokens), f"{run.epochs:.4g}", f"{run.flops:.3e}", _resources(run),
            format_duration(seconds) if seconds is not None else "",
        )  # fmt: skip
    out = Console(width=max(120, Console().width))
    _print_ladder(sweep, out)
    out.print(table)
    known = [seconds for seconds in estimates if seconds is not None]
    points = len({run.point for run in runs})
    total_tokens = sum(run.tokens for run in runs)
    lines = [
        f"runs {len(runs)} ({points} grid points x {len(sweep.seeds)} seed(s))" + (f", {skipped} points skipped" if skipped else ""),
        f"total compute {sum(run.flops for run in runs):.4e} FLOPs (6ND), {sum(run.flops_full for run in runs):.4e} with attention and output layer",
        f"total tokens {format_quantity(total_tokens)} ({total_tokens:,})",
    ]
    if known:
        coverage = "" if len(known) == len(runs) else f" for the {len(known)} of {len(runs)} runs whose shape the store has seen"
        lines.append(f"estimated time {format_duration(sum(known))}, one run after another{coverage}")
    else:
        lines.append("estimated time: unknown (no finished run in the store has these model shapes)")
    for line in lines:
        out.print(line, highlight=False)
    _print_trunks(out, runs)


def _print_trunks(out: Console, runs: list[RunSpec]) -> None:
    """The WSD trunks of the runs (none: nothing printed), and the compute they save."""
    from pipeline.trunks import plan_trunks, sharing

    trunks, branches = plan_trunks(runs)
    if not trunks:
        return
    table = Table(title=f"{len(trunks)} WSD trunks, {len(branches)} branches", title_justify="left")
    for header in ("trunk", "D (constant rate)", "FLOPs (6ND)", "branches: cooldown from D_start to D"):
        table.add_column(header, justify="left" if header in ("trunk", "branches: cooldown from D_start to D") else "right")
    for trunk in trunks:
        starts = ", ".join(
            f"{run.name} {format_quantity(run.config.cooldown_start_step * run.config.batch_tokens)}->{format_quantity(run.tokens)}"
            for run in trunk.branches
        )  # fmt: skip
        table.add_row(trunk.name, format_quantity(trunk.config.tokens), f"{trunk.flops:.3e}", starts)
    out.print(table)
    shared, independent = sharing(trunks, branches)
    out.print(f"compute with trunks {shared:.4e} FLOPs (6ND): trunks {sum(t.flops for t in trunks):.4e} + branches' cooldowns "
              f"{shared - sum(t.flops for t in trunks):.4e}; as independent runs {independent:.4e} ({independent / shared:.2f}x)",
              highlight=False, soft_wrap=True)  # fmt: skip


def _write_csv(runs: list[RunSpec], estimates: list[float | None]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run, seconds in zip(runs, estimates):
        r = run.resources
        writer.writerow([
            run.name, run.model, run.seed, run.params, run.params_non_embedding, run.tokens, run.unique_tokens,
            repr(run.epochs), repr(run.flops), repr(run.flops_full), r.cpus, r.gpus, r.nodes,
            "" if seconds is None else f"{seconds:.1f}",
        ])  # fmt: skip
