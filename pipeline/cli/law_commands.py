"""`dcsl fit`, `dcsl allocate`, `dcsl predict`, `dcsl epochs`: the scaling-law commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NamedTuple, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli import app, store_runs
from pipeline.tables import read_runs
from scaling.allocate import (
    allocation_records, least_compute, loss_floor, repetition_blind_allocation, saturation_epochs,
    allocate as allocate_law,
)
from scaling.atomic import write_text_atomic
from scaling.errors import InputError
from scaling.extrapolation import PRESET_RANGES, outside_range
from scaling.fit import FitSpec
from scaling.laws import PRESETS, BaseLaw, Law, preset
from scaling.lawfile import (
    bootstrap_samples, dumps, fit_law_document, fit_pool_law_document, pool_bootstrap_samples, read_law,
)
from scaling.pool_allocate import PAYS_SHARE, pays_from, pool_allocation_records
from scaling.pool_fit import PoolFitSpec
from scaling.pool_laws import POOL_LAWS, PoolLaw
from scaling.units import format_quantity, parse_quantity

out = Console()
err = Console(stderr=True)

# Options shared by the query commands.
LawFile = Annotated[Optional[Path], typer.Option("--law", help="A fitted law.json (bootstrap samples give intervals).")]
PresetName = Annotated[Optional[str], typer.Option("--preset", help=f"A preset law: {', '.join(PRESETS)} (default c4).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _parse_assignment(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise InputError(option, f"{text!r} must look like NAME=VALUE")
    return name.strip(), value.strip()


def _parse_number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(option, f"{text!r} is not a number") from None


def _parse_fixes(items: list[str]) -> dict[str, float]:
    return {name: _parse_number(value, f"--fix {name}") for name, value in
            (_parse_assignment(item, "--fix") for item in items)}


def _parse_bounds(items: list[str]) -> dict[str, tuple[float, float]]:
    bounds = {}
    for item in items:
        name, value = _parse_assignment(item, "--bound")
        lo, sep, hi = value.partition(":")
        if not sep:
            raise InputError("--bound", f"{item!r} must look like NAME=LOW:HIGH")
        bounds[name] = (_parse_number(lo, f"--bound {name}"), _parse_number(hi, f"--bound {name}"))
    return bounds


class ChosenLaw(NamedTuple):
    """The law a query uses: the law, its law.json document (None for a preset), a label, its runs' N and D range."""

    law: Law
    document: dict | None
    label: str
    fitted: dict | None


def _one_pool_law(chosen: ChosenLaw) -> ChosenLaw:
    """`chosen` itself; InputError when it is a pool law, which only `dcsl allocate --unique-tokens POOL=U` answers."""
    if isinstance(chosen.law, PoolLaw):
        raise InputError("--law", f"{chosen.label} is a {chosen.law.name} law over pools "
                                  f"{', '.join(chosen.law.pools)}; ask `dcsl allocate --unique-tokens POOL=U ...`")
    return chosen


def _choose_law(law_file: Path | None, preset_name: str | None, default: str = "c4") -> ChosenLaw:
    """The law to query: from a law.json, a preset, or the default preset."""
    if law_file is not None and preset_name is not None:
        raise InputError("--law and --preset", "give one of them, not both")
    if law_file is not None:
        law, document = read_law(law_file)
        return ChosenLaw(law, document, str(law_file), document.get("fitted_range"))
    name = preset_name or default
    return ChosenLaw(preset(name), None, f"preset {name}", PRESET_RANGES.get(name))


def _warn_outside(chosen: ChosenLaw, record: dict) -> None:
    """Add `warnings` to an answer whose N or D lies far outside the law's runs, and print them on stderr."""
    warnings = outside_range(chosen.fitted, params=record["params"], tokens=record["tokens"])
    if warnings:
        record["warnings"] = warnings
        for warning in warnings:
            err.print(f"[yellow]warning:[/] {warning} ({chosen.label})", highlight=False, soft_wrap=True)


def _fixed_base(base_preset: str | None, base_file: Path | None) -> tuple[BaseLaw | None, str | None]:
    """The base law held fixed (from --base-preset or --base) and where it came from; (None, None) without one."""
    if base_preset is not None and base_file is not None:
        raise InputError("--base-preset and --base", "give one of them, not both")
    if base_preset is not None:
        return preset(base_preset).base, f"preset:{base_preset}"
    if base_file is not None:
        return read_law(base_file)[0].base, str(base_file)
    return None, None


def _fit_spec(law: str, base_preset: str | None, base_file: Path | None, joint: bool, fixes: list[str],
              bounds: list[str], tie: bool) -> tuple[FitSpec, str | None]:
    """The spec the fit flags ask for, and the source of its fixed base law."""
    base, source = _fixed_base(base_preset, base_file)
    if law == BaseLaw.name and (base is not None or joint):
        raise InputError("--law base", "fits the base law itself; --base, --base-preset and --joint don't apply")
    if joint and base is not None:
        raise InputError("--joint", "fits all seven parameters; drop --base/--base-preset (or --fix them)")
    spec = FitSpec.resolve(law=law, base=base, method="joint" if joint else None, fixed=_parse_fixes(fixes),
                           bounds=_parse_bounds(bounds), tie_exponents=tie)
    return spec, source


def _read_table(runs: Path | None, loss_column: str | None, wandb_project: str | None, filters: str | None,
                wandb_keys: list[str]):
    """The runs to fit: from W&B, from a store's finished runs, or from a CSV/Parquet file."""
    if (runs is None) == (wandb_project is None):
        raise InputError("runs", "give a run table file or store folder, or --wandb ENTITY/PROJECT (one of them)")
    if wandb_project is not None:
        from pipeline.wandb_runs import DEFAULT_KEYS, parse_filters, read_wandb_runs

        keys = dict(_parse_assignment(item, "--wandb-key") for item in wandb_keys)
        unknown = sorted(set(keys) - set(DEFAULT_KEYS))
        if unknown:
            raise InputError("--wandb-key", f"{unknown[0]!r} is not a column; use {', '.join(DEFAULT_KEYS)}")
        return read_wandb_runs(wandb_project, parse_filters(filters), keys)
    if filters is not None or wandb_keys:
        raise InputError("--filters, --wandb-key", "only apply with --wandb")
    if runs.is_dir():
        from stages.fit import run_table  # pydantic and the record model load only for a store

        return run_table(store_runs(runs))
    return read_runs(runs, loss_column=loss_column)


@app.command("fit")
def fit_command(
    runs: Optional[Path] = typer.Argument(None, help="Run table (.csv or .parquet): params, tokens, unique_tokens, val_loss|loss; or a store folder."),
    law: str = typer.Option("data-constrained", "--law", help=f"data-constrained, base, or a pool law ({', '.join(POOL_LAWS)}) for tables with tokens.<pool> columns."),
    base_preset: str = typer.Option(None, "--base-preset", help=f"Fix the base law to a preset ({', '.join(PRESETS)}); fit R_D*, R_N*."),
    base: Path = typer.Option(None, "--base", help="Fix the base law to a previous fit (law.json); fit R_D*, R_N*."),
    joint: bool = typer.Option(False, "--joint", help="Fit all seven parameters at once."),
    fix: list[str] = typer.Option([], "--fix", help="Fix a parameter, NAME=VALUE (E, A, B, e, a, b, alpha, beta, rd_star, rn_star). Repeatable."),
    bound: list[str] = typer.Option([], "--bound", help="Search box of a parameter, NAME=LOW:HIGH. Repeatable."),
    tie_exponents: bool = typer.Option(False, "--tie-exponents", help="Fit one exponent for alpha = beta."),
    bootstrap_resamples: int = typer.Option(0, "--bootstrap", min=0, help="Bootstrap resamples over runs for intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    loss_column: str = typer.Option(None, "--loss-column", help="Name of the loss column (default: val_loss, then loss)."),
    extrapolate_above: str = typer.Option(None, "--extrapolate-above", help="Leave-out check: fit runs with 6ND up to this, score the rest (default: 75th percentile)."),
    out_path: Path = typer.Option(None, "--out", help="Write law.json here."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly the content of law.json."),
    wandb_project: str = typer.Option(None, "--wandb", help="Read the finished runs of this W&B project, ENTITY/PROJECT, instead of a file."),
    filters: str = typer.Option(None, "--filters", help='W&B run filters as JSON (MongoDB-style), e.g. \'{"config.backend": "torch"}\'.'),
    wandb_key: list[str] = typer.Option([], "--wandb-key", help="Summary/config key of a column, COLUMN=KEY (params, tokens, unique_tokens, loss). Repeatable."),
) -> None:
    """Fit the scaling law to logged runs (a CSV or Parquet table, a store, or a W&B project) and write law.json."""
    if law in POOL_LAWS:
        if fix or bound or tie_exponents or extrapolate_above is not None:
            raise InputError(f"--law {law}", "--fix, --bound, --tie-exponents and --extrapolate-above apply to one-pool laws only")
        pool_spec, base_source = _pool_fit_spec(law, base_preset, base, joint)
    else:
        spec, base_source = _fit_spec(law, base_preset, base, joint, fix, bound, tie_exponents)
        threshold = None if extrapolate_above is None else parse_quantity(extrapolate_above, "--extrapolate-above")
    table = _read_table(runs, loss_column, wandb_project, filters, wandb_key)
    for warning in table.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    with err.status("fitting", spinner="dots") as status:
        if law in POOL_LAWS:
            result, document = fit_pool_law_document(table, pool_spec, resamples=bootstrap_resamples, seed=seed,
                                                     base_source=base_source, on_stage=status.update)
        else:
            result, document = fit_law_document(table, spec, resamples=bootstrap_resamples, seed=seed,
                                                extrapolate_above=threshold, base_source=base_source,
                                                on_stage=status.update)
    text = dumps(document)
    if out_path is not None:
        write_text_atomic(out_path, text)
    if as_json:
        typer.echo(text, nl=False)
        return
    _print_fit_summary(result, document, out_path)


def _pool_fit_spec(law: str, base_preset: str | None, base_file: Path | None, joint: bool) -> tuple[PoolFitSpec, str | None]:
    """The spec of a pool-law fit: the base law fixed (--base-preset / --base) or fitted too (--joint)."""
    base, source = _fixed_base(base_preset, base_file)
    if joint == (base is not None):
        raise InputError(f"--law {law}", "give a base law to hold fixed (--base-preset NAME or --base law.json) "
                                         "or --joint to fit it too (one of them)")
    return PoolFitSpec(law, base), source


def _print_fit_summary(result, document: dict, out_path: Path | None) -> None:
    table = Table(title=f"{document['law']} law, {document['method']} fit on {document['n_runs']} runs")
    table.add_column("parameter")
    table.add_column("value", justify="right")
    intervals = (document["intervals"] or {}).get("params", {})
    if intervals:
        table.add_column(f"{int(100 * document['intervals']['confidence'])}% interval", justify="right")
    table.add_column("")
    for name, value in document["params"].items():
        note = "fixed" if name in document["fixed"] else ("on bound" if name in document["at_bounds"] else "")
        row = [name, f"{value:.6g}"]
        if intervals:
            row.append(f"[{intervals[name][0]:.4g}, {intervals[name][1]:.4g}]" if name in intervals else "")
        table.add_row(*row, note)
    out.print(table)
    d = document["diagnostics"]
    out.print(f"Huber objective {document['objective']['huber']:.10g} (delta {document['objective']['delta']:g}, "
              f"{document['objective']['starts']} starts)")
    out.print(f"R^2 log-loss {d['r2_log_loss']:.4f}, RMSE log-loss {d['rmse_log_loss']:.4g}; "
              f"R^2 loss {d['r2_loss']:.4f}, RMSE loss {d['rmse_loss']:.4g}")
    ex = d.get("extrapolation", {})
    if "skipped" in ex:
        out.print(f"extrapolation check skipped: {ex['skipped']}")
    elif ex:
        out.print(f"extrapolation: fit on {ex['n_fit']} runs with C <= {ex['threshold_flops']:.3g}, "
                  f"{ex['n_held_out']} held out: RMSE {ex['rmse_loss']:.4g}, max |error| {ex['max_abs_error']:.4g}, "
                  f"mean |relative error| {100 * ex['mean_abs_relative_error']:.2f}%")
    if document["at_bounds"]:
        remedy = ("the pool laws' box is fixed (scaling.pool_fit.OWN_BOUNDS)" if document["law"] in POOL_LAWS
                  else "widen it with --bound NAME=LOW:HIGH")
        err.print(f"[yellow]warning:[/] {', '.join(document['at_bounds'])} ended on the search bound; {remedy}",
                  highlight=False, soft_wrap=True)
    if out_path is not None:
        out.print(f"wrote {out_path}")


@app.command("allocate")
def allocate_command(
    flops: list[str] = typer.Option([], "--flops", help="Compute budget C in FLOPs (1e22, 1.5e21, 25B...). Repeat it or separate values by commas for a table."),
    unique_tokens: list[str] = typer.Option(..., "--unique-tokens", help="Unique tokens U available; for a multi-pool law POOL=U, once per pool."),
    target_loss: float = typer.Option(None, "--target-loss", help="Instead of --flops: the least compute that reaches this loss under U."),
    law_file: LawFile = None,
    preset_name: PresetName = None,
    as_json: AsJson = False,
) -> None:
    """Optimal model size, tokens and epochs for a compute budget under a unique-data budget."""
    chosen = _choose_law(law_file, preset_name)
    law, document, label = chosen.law, chosen.document, chosen.label
    if isinstance(law, PoolLaw):
        if target_loss is not None:
            raise InputError("--target-loss", f"applies to one-pool laws; {label} is a {law.name} law")
        _allocate_pools(chosen, _parse_budgets(flops), _pool_budgets(law, unique_tokens), as_json)
        return
    if len(unique_tokens) != 1 or "=" in unique_tokens[0]:
        raise InputError("--unique-tokens", f"{' '.join(unique_tokens)!r}: a one-pool law ({label}) takes one number; "
                                            f"POOL=U is for a multi-pool law.json")
    unique = parse_quantity(unique_tokens[0], "--unique-tokens")
    if target_loss is not None:
        if flops:
            raise InputError("--target-loss and --flops", "give one of them, not both")
        _least_compute(law, target_loss, unique, label, as_json)
        return
    budgets = _parse_budgets(flops)
    samples = bootstrap_samples(document) if document else None
    records = allocation_records(law.full_params(), budgets, unique, samples)
    blind = repetition_blind_allocation(law, budgets, unique)
    for i, record in enumerate(records):
        record["base_law"] = {key: float(np.asarray(value)[i]) for key, value in blind.items()}
        _warn_outside(chosen, record)
    if as_json:
        typer.echo(json.dumps(records[0] if len(records) == 1 else records, indent=2))
        return
    table = Table(title=f"Optimal allocation under U = {format_quantity(unique)} unique tokens ({label})",
                  caption="blind: the base law's optimum, which ignores repetition; its loss as predicted under U")
    for column in ("C (FLOPs)", "N", "D", "epochs", "loss", "N blind", "epochs blind", "loss blind"):
        table.add_column(column, justify="right")
    for r in records:
        b = r["base_law"]
        table.add_row(f"{r['flops']:.3g}", *(_fmt(key, r[key]) for key in ("params", "tokens", "epochs", "loss")),
                      _fmt("params", b["params"]), _fmt("epochs", b["epochs"]), _fmt("loss", b["loss"]))
    out.print(table)
    if "intervals" in records[0]:
        spread = Table(title="95% bootstrap intervals of the optimum")
        for column in ("C (FLOPs)", "N", "D", "epochs", "loss"):
            spread.add_column(column, justify="right")
        for r in records:
            spread.add_row(f"{r['flops']:.3g}", *("–".join(_fmt(key, v, compact=True) for v in r["intervals"][key])
                                                 for key in ("params", "tokens", "epochs", "loss")))
        out.print(spread)


def _parse_budgets(flops: list[str]) -> np.ndarray:
    if not flops:
        raise InputError("--flops", "give at least one compute budget (or --target-loss)")
    return np.array([parse_quantity(c, "--flops") for item in flops for c in item.split(",")])


def _pool_budgets(law: PoolLaw, items: list[str]) -> np.ndarray:
    """U_i per pool of `law`, in its order, from POOL=U items: every pool once, no other."""
    given = {}
    for item in items:
        pool, value = _parse_assignment(item, "--unique-tokens")
        if pool not in law.pools:
            raise InputError("--unique-tokens", f"pool {pool!r} is not in the law; its pools are {', '.join(law.pools)}")
        if pool in given:
            raise InputError("--unique-tokens", f"pool {pool!r} is given twice")
        given[pool] = parse_quantity(value, f"--unique-tokens {pool}")
    missing = [pool for pool in law.pools if pool not in given]
    if missing:
        raise InputError("--unique-tokens", f"no budget for pool {missing[0]!r}; give POOL=U for each of {', '.join(law.pools)}")
    return np.array([given[pool] for pool in law.pools])


def _allocate_pools(chosen: ChosenLaw, budgets: np.ndarray, unique: np.ndarray, as_json: bool) -> None:
    """Print the optimal N, D_i and epochs_i per compute budget, and from which compute each pool pays."""
    law = chosen.law
    samples = pool_bootstrap_samples(chosen.document) if chosen.document else None
    records = pool_allocation_records(law, budgets, unique, samples)
    for record in records:
        _warn_outside(chosen, record)
    pays = pays_from(law, unique)
    if as_json:
        answer = {"law": law.name, "reference_pool": law.pools[0], "allocations": records,
                  "pays_from_flops": {pool: (c if np.isfinite(c) else None) for pool, c in pays.items()}}
        typer.echo(json.dumps(answer, indent=2))
        return
    budget_text = ", ".join(f"{pool} {format_quantity(u)}" for pool, u in zip(law.pools, unique))
    table = Table(title=f"Optimal allocation across pools (unique tokens: {budget_text}; {chosen.label})")
    table.add_column("C (FLOPs)", justify="right")
    table.add_column("N", justify="right")
    for pool in law.pools:
        table.add_column(f"D {pool}", justify="right")
        table.add_column(f"epochs {pool}", justify="right")
    table.add_column("loss", justify="right")
    for r in records:
        cells = [_fmt(key, r["pools"][pool][key]) for pool in law.pools for key in ("tokens", "epochs")]
        table.add_row(f"{r['flops']:.3g}", _fmt("params", r["params"]), *cells, _fmt("loss", r["loss"]))
    out.print(table)
    if samples is not None:
        spread = Table(title="95% bootstrap intervals of the optimum")
        for column in ("C (FLOPs)", "N", *(f"D {pool}" for pool in law.pools), "loss"):
            spread.add_column(column, justify="right")
        for r in records:
            ranges = [r["intervals"]["params"], *(r["intervals"]["pools"][pool]["tokens"] for pool in law.pools)]
            spread.add_row(f"{r['flops']:.3g}", *("–".join(_fmt("params", v, compact=True) for v in pair) for pair in ranges),
                           "–".join(_fmt("loss", v, compact=True) for v in r["intervals"]["loss"]))
        out.print(spread)
    for pool, c in pays.items():
        if np.isfinite(c):
            out.print(f"pool {pool} starts to pay (gets >= {PAYS_SHARE:.1%} of the optimal tokens) from C = {c:.4g} FLOPs")
        else:
            out.print(f"pool {pool} does not pay at any compute in the range searched")


def _fmt(key: str, value: float, compact: bool = False) -> str:
    if key in ("params", "tokens"):
        return format_quantity(value, digits=3 if compact else 4)
    if key == "epochs":
        return f"{value:.1f}" if compact else f"{value:.2f}"
    return f"{value:.3f}" if compact else f"{value:.4f}"


def _least_compute(law: Law, target: float, unique: float, label: str, as_json: bool) -> None:
    if not target > 0:
        raise InputError("--target-loss", f"{target!r} must be > 0")
    flops = float(least_compute(law, target, unique))
    floor = float(loss_floor(law, unique)) if not isinstance(law, BaseLaw) else float(law.E)
    record = {"target_loss": target, "unique_tokens": unique, "flops": flops, "loss_floor": floor}
    if np.isfinite(flops):
        best = allocate_law(law, flops, unique)
        record.update(params=float(best.params), tokens=float(best.tokens), epochs=float(best.epochs))
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    elif np.isfinite(flops):
        out.print(f"loss {target:g} under U = {format_quantity(unique)} ({label}) needs at least C = {flops:.4g} FLOPs: "
                  f"N = {format_quantity(record['params'])}, D = {format_quantity(record['tokens'])}, "
                  f"{record['epochs']:.2f} epochs")
    else:
        out.print(f"loss {target:g} is out of reach with U = {format_quantity(unique)} ({label}): "
                  f"the lowest reachable loss is {floor:.4f}")


@app.command("predict")
def predict_command(
    params: str = typer.Option(..., "--params", help="Model parameters N (e.g. 7B)."),
    tokens: str = typer.Option(..., "--tokens", help="Training tokens D."),
    unique_tokens: str = typer.Option(None, "--unique-tokens", help="Unique tokens U (default: D, no repetition)."),
    law_file: LawFile = None,
    preset_name: PresetName = None,
    as_json: AsJson = False,
) -> None:
    """Predicted loss for N parameters trained on D tokens drawn from U unique ones."""
    chosen = _one_pool_law(_choose_law(law_file, preset_name))
    law, label = chosen.law, chosen.label
    n = parse_quantity(params, "--params")
    d = parse_quantity(tokens, "--tokens")
    u = d if unique_tokens is None else parse_quantity(unique_tokens, "--unique-tokens")
    if u > d:
        raise InputError("--unique-tokens", f"{u:g} exceeds --tokens {d:g}; a run cannot see more unique tokens than it trains on")
    record = {"params": n, "tokens": d, "unique_tokens": u, "epochs": d / u, "loss": float(law.predict(n, d, u))}
    _warn_outside(chosen, record)
    loss = record["loss"]
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        out.print(f"L(N={format_quantity(n)}, D={format_quantity(d)}, U={format_quantity(u)}) = {loss:.6f} ({label})")


@app.command("epochs")
def epochs_command(
    params: str = typer.Option(..., "--params", help="Model parameters N."),
    unique_tokens: str = typer.Option(..., "--unique-tokens", help="Unique tokens U."),
    tolerance: float = typer.Option(1e-3, "--tolerance", help="Stop when more epochs would improve the loss by less than this."),
    law_file: LawFile = None,
    preset_name: PresetName = None,
    as_json: AsJson = False,
) -> None:
    """Epochs over U unique tokens after which an N-parameter model stops gaining (within a tolerance)."""
    law, _, label, _ = _one_pool_law(_choose_law(law_file, preset_name))
    n = parse_quantity(params, "--params")
    u = parse_quantity(unique_tokens, "--unique-tokens")
    result = {key: float(value) for key, value in saturation_epochs(law, n, u, tolerance).items()}
    record = {"params": n, "unique_tokens": u, "tolerance": tolerance, **result, "tokens": result["epochs"] * u}
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        out.print(f"N = {format_quantity(n)}, U = {format_quantity(u)} ({label}): {record['epochs']:.2f} epochs "
                  f"({format_quantity(record['tokens'])} tokens) reach loss {record['loss']:.4f}, within {tolerance:g} "
                  f"of the limit {record['limit_loss']:.4f}")

