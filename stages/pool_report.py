"""The report of a multi-pool study: its runs per pool as a table, and two plots of the first pool's effect.

The first pool of the corpus is the one the studies repeat (the high-quality pool of a quality-
quantity study, the small repeated subset of a Hernandez et al. study). Outputs:

  pools.csv                 one row per run: the model, D, per pool U_i, D_i, epochs_i and its validation loss
  loss_vs_epochs.png        eval loss against the first pool's epochs, one line per share of D it gets (the mix),
                            one panel per model size
  loss_vs_share.png         eval loss against the first pool's share f of D, one line per U of the first pool
  allocation.csv            with the fitted pool law: the optimal N and D_i per compute budget (each pool's largest U)
  report.md                 the tables, the plots, the fitted law, the allocation and where each pool starts to pay
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scaling.atomic import write_text_atomic
from scaling.units import format_quantity
from stages.fit import runs_csv
from stages.record import RunFailure, RunRecord
from scaling.lawfile import read_law
from scaling.pool_allocate import PAYS_SHARE, pays_from, pool_allocation_records
from stages.report import compute_grid, csv_text, fit_checks, save_png

REPORT = "report.md"
ALLOCATION = "allocation.csv"
NO_LAW = "## Allocation across pools\n\nNo fitted law (the fit step did not finish: see `dcsl status`); this report shows the runs alone.\n"
TABLE = "pools.csv"
PLOTS = {"epochs": "loss_vs_epochs.png", "share": "loss_vs_share.png"}


def first_pool_share(record: RunRecord) -> float:
    """The share of the run's D drawn from its first pool (6 digits)."""
    return round(record.pools[0].tokens / record.tokens, 6)


def write_pool_report(records: list[RunRecord], failed: list[RunFailure], out_dir: Path, law_path: Path | None = None) -> Path:
    """Write the table, the two plots and report.md into `out_dir` (with the fitted pool law at `law_path`, also
    the allocation across pools); return report.md."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    law, document = read_law(law_path) if law_path else (None, {})
    params_kind = document.get("params_kind", "non_embedding")
    write_text_atomic(out_dir / TABLE, runs_csv(records))
    _plot(plt, records, params_kind, out_dir / PLOTS["epochs"], x=lambda r: r.pools[0].epochs, group=first_pool_share,
          label=lambda share: f"share {share:g}", xlabel=f"epochs of pool {records[0].pools[0].name}", log=True)
    _plot(plt, records, params_kind, out_dir / PLOTS["share"], x=first_pool_share, group=lambda r: r.pools[0].unique_tokens,
          label=lambda unique: f"U={format_quantity(unique, 3)}", xlabel=f"share f of D from pool {records[0].pools[0].name}", log=False)
    allocation = allocation_markdown(law, document, records, out_dir) if law else NO_LAW
    write_text_atomic(out_dir / REPORT, _markdown(records, failed, params_kind) + allocation)
    return out_dir / REPORT


def allocation_rows(law, records: list[RunRecord]) -> list[dict]:
    """The law's optimal N and D_i at compute budgets from the study's smallest run to 100x its largest, with each
    pool's largest unique budget of the study, flat: `tokens.<pool>`, `epochs.<pool>`, `unique_tokens.<pool>`."""
    unique = np.array([max(record.pools[i].unique_tokens for record in records) for i in range(len(records[0].pools))])
    rows = []
    for found in pool_allocation_records(law, compute_grid(records), unique):
        row = {key: found[key] for key in ("flops", "params", "tokens", "loss")}
        for name, pool in found["pools"].items():
            row.update({f"{field}.{name}": value for field, value in pool.items()})
        rows.append(row)
    return rows


def allocation_markdown(law, document: dict, records: list[RunRecord], out_dir: Path) -> str:
    """The report's sections on the fitted pool law and the allocation across pools (writes `allocation.csv`)."""
    rows = allocation_rows(law, records)
    write_text_atomic(out_dir / ALLOCATION, csv_text(rows))
    names = [pool.name for pool in records[0].pools]
    unique = [rows[0][f"unique_tokens.{name}"] for name in names]
    lines = ["## Fitted law", "", f"`{document['law']}` ({document['method']} fit on {document['n_runs']} runs; "
             f"[law.json](law.json)):", "", "| parameter | value |", "| --- | --- |"]  # fmt: skip
    lines += [f"| {name} | {value:.6g} |" for name, value in law.params().items()]
    lines += ["", *fit_checks(document)]
    lines += ["", "## Allocation across pools", "",
              "With " + ", ".join(f"{format_quantity(u)} unique tokens of {n}" for n, u in zip(names, unique))
              + f": every row in [{ALLOCATION}]({ALLOCATION}).", "",
              "| compute | N* | " + " | ".join(f"D {n} | epochs {n}" for n in names) + " | loss |", "|" + " --- |" * (3 + 2 * len(names))]  # fmt: skip
    for row in rows:
        per_pool = " | ".join(f"{format_quantity(row[f'tokens.{n}'])} | {row[f'epochs.{n}']:.3g}" for n in names)
        lines.append(f"| {row['flops']:.3g} | {format_quantity(row['params'])} | {per_pool} | {row['loss']:.4f} |")
    pays = pays_from(law, unique)
    lines += [""] + [f"Pool {name} starts to pay (gets at least {PAYS_SHARE:.1%} of the optimal D) from "
                     + (f"C = {flops:.3g} FLOPs." if np.isfinite(flops) else "no compute in the searched range.")
                     for name, flops in pays.items()] + [""]  # fmt: skip
    return "\n".join(lines)


def _plot(plt, records, params_kind, path, *, x, group, label, xlabel, log) -> None:
    sizes = sorted({r.params_for(params_kind) for r in records})
    figure, panels = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4), squeeze=False, sharey=True)
    for axes, size in zip(panels[0], sizes):
        runs = [r for r in records if r.params_for(params_kind) == size]
        keys = sorted({group(r) for r in runs})
        for key, colour in zip(keys, plt.cm.viridis(np.linspace(0, 0.85, len(keys)))):
            mine = sorted((r for r in runs if group(r) == key), key=x)
            axes.plot([x(r) for r in mine], [r.val_loss for r in mine], marker="o", color=colour, label=label(key))
        axes.set(xscale="log" if log else "linear", xlabel=xlabel, title=f"N = {format_quantity(size, 3)}")
        if log:
            axes.set_xscale("log", base=2)
        axes.legend(fontsize=7)
    panels[0][0].set_ylabel(f"validation loss on pool {records[0].eval_pool}")
    save_png(figure, path)
    plt.close(figure)


def _markdown(records: list[RunRecord], failed: list[RunFailure], params_kind: str) -> str:
    names = [pool.name for pool in records[0].pools]
    first = names[0]
    lines = ["# Multi-pool sweep report", "",
             f"{len(records)} runs" + (f"; {len(failed)} did not finish: " + ", ".join(f"{f.name} ({f.reason})" for f in failed) if failed else "")
             + f". Pools: {', '.join(names)} (the first, {first}, is the one repeated); val_loss is on pool {records[0].eval_pool}.", "",
             "## Runs", "", f"Every run with its per-pool numbers: [{TABLE}]({TABLE}).", "",
             "| N | D | " + " | ".join(f"U {n} | epochs {n}" for n in names) + f" | share of {first} | val_loss | "
             + " | ".join(f"loss {n}" for n in names) + " |",
             "|" + " --- |" * (4 + 3 * len(names))]  # fmt: skip
    for r in sorted(records, key=lambda r: (r.params_for(params_kind), first_pool_share(r), r.pools[0].epochs)):
        per_pool = " | ".join(f"{format_quantity(p.unique_tokens)} | {p.epochs:.3g}" for p in r.pools)
        losses = " | ".join(f"{p.val_loss:.4f}" for p in r.pools)
        lines.append(f"| {format_quantity(r.params_for(params_kind), 3)} | {format_quantity(r.tokens)} | {per_pool} | "
                     f"{first_pool_share(r):g} | {r.val_loss:.4f} | {losses} |")  # fmt: skip
    lines += ["", "## Plots", "", *(f"![{key}]({name})" for key, name in PLOTS.items()), "", ""]
    return "\n".join(lines)
