"""`dcsl suggest`: the next runs to train, chosen to shrink the uncertainty of the answer at (C, U).

The choice is `scaling.suggest` (its docstring has the method). `--out` with `--sweep BASE.yaml`
writes a complete sweep file: BASE with the suggested runs as its models and grid (BASE's size
ladder on the suggested sizes, or `params:` sizes when BASE's models are written by hand).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli import app
from pipeline.cli.law_commands import _fit_spec, _fmt, _read_table
from scaling.errors import InputError
from scaling.laws import PRESETS
from scaling.suggest import ANSWER
from scaling.units import format_quantity, parse_quantity

out = Console()
err = Console(stderr=True)


def _law_and_samples(table, law_file: Path | None, base_preset: str | None, resamples: int, seed: int, status):
    """The law and its (K, 7) bootstrap samples: from a law.json, or fitted to `table` here."""
    from scaling.lawfile import bootstrap_samples, read_law

    if law_file is not None:
        if base_preset is not None:
            raise InputError("--law and --base-preset", "give one of them, not both")
        law, document = read_law(law_file)
        samples = bootstrap_samples(document)
        if samples is None:
            raise InputError("--law", f"{law_file} has no bootstrap samples; fit it with --bootstrap N")
        return law, samples
    from scaling.bootstrap import bootstrap
    from scaling.fit import fit
    from scaling.suggest import MIN_DRAWS

    spec, _ = _fit_spec("data-constrained", base_preset, None, False, [], [], False)
    if resamples < MIN_DRAWS:
        raise InputError("--bootstrap", f"{resamples} resamples are too few for a spread; use at least {MIN_DRAWS}")
    status.update("fitting")
    result = fit(table, spec)
    status.update(f"bootstrap: {resamples} resamples")
    return result.law, bootstrap(table, result, resamples, seed)


def _base_sweep(path: Path) -> tuple[dict, object]:
    """The sweep file --out starts from: as a mapping, and as its checked config (before any work)."""
    from pipeline.config import load_sweep
    from pipeline.config_files import read_yaml

    config = load_sweep(path)
    return read_yaml(path), config


def _suggested_models(base: dict, config, sizes: list[int]) -> tuple[object, dict[int, str], float]:
    """`models:` for the suggested sizes, each size's model name, and the largest gap of planned to suggested N.

    A base written as a size ladder keeps its ladder (shape rules, per-size learning rates) on the
    suggested sizes, sizes that its rules give one shape sharing one rung; hand-written models become
    `params:` sizes that the size table shapes.
    """
    from stages.ladder import Ladder
    from stages.shapes import ModelShape, shape_for_params

    written = base.get("models")
    if isinstance(written, dict) and "ladder" in written:
        rules = {key: value for key, value in written["ladder"].items() if key != "count"}
        rung_of = {n: Ladder.model_validate(rules | {"sizes": [n]}).rungs(config.vocab_size(), config.train.seq_len)[0]
                   for n in sizes}
        shapes = {(rung.layers, rung.width): rung for rung in reversed(rung_of.values())}  # the smallest size per shape
        gap = max(abs(rung.params / n - 1.0) for n, rung in rung_of.items())
        names = {n: shapes[rung.layers, rung.width].name for n, rung in rung_of.items()}
        return {"ladder": rules | {"sizes": sorted(rung.target for rung in shapes.values())}}, names, gap
    names = {n: f"n{format_quantity(n, 3)}" for n in sizes}
    gap = max(abs(ModelShape(*shape_for_params(n), 1, 1).params.non_embedding / n - 1.0) for n in sizes)
    return [{"name": name, "params": n} for n, name in names.items()], names, gap


def _sweep_document(base: dict, config, runs: list[dict]) -> tuple[dict, float]:
    """The base sweep with the runs as its models and grid, checked; and the largest gap of planned to suggested N."""
    from pydantic import ValidationError

    from pipeline.config import SweepConfig
    from pipeline.config_files import validation_error
    from pipeline.expand import expand

    document = dict(base)
    try:
        document["models"], names, gap = _suggested_models(base, config, sorted({round(run["params"]) for run in runs}))
        blocks: dict[tuple[str, int], list[int]] = {}
        for run in runs:
            blocks.setdefault((names[round(run["params"])], round(run["unique_tokens"])), []).append(round(run["epochs"]))
        document["grid"] = [{"models": [name], "unique_tokens": unique, "epochs": sorted(set(epochs))}
                            for (name, unique), epochs in blocks.items()]
        expand(SweepConfig.model_validate(document))
    except ValidationError as error:
        raise validation_error(error, SweepConfig).within("--sweep") from None
    except InputError as error:
        raise error.within("--sweep") from None
    return document, gap


@app.command("suggest")
def suggest_command(
    runs: Path = typer.Argument(..., help="The runs so far: a run table (.csv or .parquet) or a store folder."),
    flops: str = typer.Option(..., "--flops", help="Target compute C in FLOPs (1e22)."),
    unique_tokens: str = typer.Option(..., "--unique-tokens", help="Target unique tokens U (25B)."),
    budget: str = typer.Option(..., "--budget", help="FLOPs (6ND summed) the suggested runs may spend."),
    law_file: Optional[Path] = typer.Option(None, "--law", help="A law.json with bootstrap samples, instead of fitting RUNS here."),
    base_preset: Optional[str] = typer.Option(None, "--base-preset", help=f"Fit R_D*, R_N* with the base law of a preset ({', '.join(PRESETS)}); default: two-stage."),
    count: int = typer.Option(8, "--count", min=1, help="Suggest at most this many runs."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Candidate model sizes, comma-separated (default: a ladder sqrt(2) apart from the runs' smallest N to 4x their largest)."),
    max_epochs: int = typer.Option(16, "--max-epochs", min=1, help="Candidate epochs 1..E."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    resamples: int = typer.Option(200, "--bootstrap", help="Bootstrap resamples when fitting RUNS here."),
    loss_column: Optional[str] = typer.Option(None, "--loss-column", help="Name of the loss column (default: val_loss, then loss)."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Write a sweep file: --sweep's with the suggested runs as models and grid."),
    sweep_file: Optional[Path] = typer.Option(None, "--sweep", help="The sweep file --out starts from (data, train, resources, fit...)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Which runs to train next: the batch within a FLOPs budget that most shrinks the uncertainty of the answer at (C, U)."""
    from scaling.suggest import budget_ladder, candidate_runs, check_budget, size_ladder, suggestion_record

    target_flops = parse_quantity(flops, "--flops")
    target_unique = parse_quantity(unique_tokens, "--unique-tokens")
    spend = parse_quantity(budget, "--budget")
    ladder = None if sizes is None else np.unique([parse_quantity(n, "--sizes") for n in sizes.split(",")])
    if (out_path is None) != (sweep_file is None):
        raise InputError("--out and --sweep", "go together: --out writes --sweep's file with the suggested runs")
    base, base_config = (None, None) if sweep_file is None else _base_sweep(sweep_file)
    table = _read_table(runs, loss_column, None, None, [])
    for warning in table.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    candidates = candidate_runs(size_ladder(table) if ladder is None else ladder,
                                budget_ladder(table, target_unique), max_epochs)
    check_budget(candidates.flops, spend)
    with err.status("fitting", spinner="dots") as status:
        law, samples = _law_and_samples(table, law_file, base_preset, resamples, seed, status)
        status.update("choosing runs")
        _, record = suggestion_record(samples, law, table, candidates, target_flops, target_unique, spend, count)
    chosen = record["runs"]
    note = None
    if out_path is not None and not chosen:
        raise InputError("--out", "no candidate run shrinks the spread at the target; nothing to write")
    if out_path is not None:
        import yaml

        from scaling.atomic import write_text_atomic

        document, gap = _sweep_document(base, base_config, chosen)
        write_text_atomic(out_path, yaml.safe_dump(document, sort_keys=False))
        rules = ("the base's size ladder on the suggested sizes (its shapes and per-size learning rates)"
                 if isinstance(document["models"], dict) else "`params:` sizes, shaped by the size table")
        note = (f"wrote {out_path}: its models are {rules}, so their N is within {100 * gap:.1f}% of the suggested N "
                f"(`dcsl plan {out_path}` shows it); the base file's other per-model settings are not carried")
        merged = len(chosen) - sum(len(block["epochs"]) for block in document["grid"])
        if merged:
            note += f"; {merged} suggested run(s) got the same shape as another and are written once"
        record["sweep_file"] = str(out_path)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        if note:
            err.print(note, highlight=False, soft_wrap=True)
        return
    _print_suggestion(record, spend)
    if note:
        out.print(note, highlight=False, soft_wrap=True)


def _print_suggestion(record: dict, budget: float) -> None:
    target = record["target"]
    table = Table(title=f"Next runs for C = {target['flops']:.3g} FLOPs, U = {format_quantity(target['unique_tokens'])}"
                        f" (used {record['budget_used']:.3g} of {budget:.3g} FLOPs)",
                  caption="gain: the share of today's uncertainty (spread of log N* and log L*) the run removes, "
                          "in order")
    for column in ("#", "N", "D", "U", "epochs", "FLOPs", "gain"):
        table.add_column(column, justify="right")
    for i, run in enumerate(record["runs"], 1):
        table.add_row(str(i), format_quantity(run["params"]), format_quantity(run["tokens"]),
                      format_quantity(run["unique_tokens"]), f"{run['epochs']:g}", f"{run['flops']:.3g}",
                      f"{100 * run['gain']:.1f}%")
    out.print(table)
    spread = Table(title="The answer now and after these runs (95% intervals)")
    for column in ("", *("N", "D", "epochs", "loss")):
        spread.add_column(column, justify="right")
    now = record["now"]
    spread.add_row("estimate", *(_fmt(key, now[key]) for key in ANSWER))
    for label, intervals in (("now", now["intervals"]), ("after", record["expected_intervals"])):
        spread.add_row(label, *("–".join(_fmt(key, v, compact=True) for v in intervals[key]) for key in ANSWER))
    out.print(spread)
