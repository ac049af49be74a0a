"""The report stage: from a fitted law and the runs, `allocation.csv`, three PNG plots and `report.md`.

Plots: observed against predicted loss; loss against epochs for each unique budget, one fitted
curve per model size; the allocation frontier (optimal N and epochs against compute for each
unique budget, beside the repetition-blind answer of the base law). With a data-constrained law,
report.md also pairs each repeated run with the single-epoch run of the same N and D (`stages.repetition`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from scaling.allocate import allocate, repetition_blind_allocation
from scaling.atomic import write_atomic, write_text_atomic
from scaling.lawfile import read_law
from scaling.units import format_quantity
from stages.contamination import WINDOW
from stages.record import RunFailure, RunRecord
from stages.repetition import repetition_markdown
from stages.suggest import ROUNDS, answer_at, round_rows, rounds_markdown

ALLOCATION = "allocation.csv"
REPORT = "report.md"
PLOTS = {"fit": "observed_vs_predicted.png", "epochs": "loss_vs_epochs.png", "frontier": "allocation_frontier.png"}
COMPUTE_POINTS = 9


def compute_grid(records: list[RunRecord], points: int = COMPUTE_POINTS) -> np.ndarray:
    """Compute budgets from the sweep's smallest run to 100x its largest, log-spaced."""
    flops = [record.flops for record in records]
    return np.geomspace(min(flops), 100 * max(flops), points)


def allocation_rows(law, flops: np.ndarray, unique_budgets: list[float]) -> list[dict]:
    """The optimal allocation and the repetition-blind one for every (compute, unique budget)."""
    rows = []
    for unique in unique_budgets:
        best = allocate(law, flops, unique)
        blind = repetition_blind_allocation(law, flops, unique)
        for i, budget in enumerate(flops):
            rows.append({
                "flops": budget, "unique_tokens": unique,
                "params": float(best.params[i]), "tokens": float(best.tokens[i]),
                "epochs": float(best.epochs[i]), "loss": float(best.loss[i]),
                "blind_params": float(blind["params"][i]), "blind_tokens": float(blind["tokens"][i]),
                "blind_epochs": float(blind["epochs"][i]), "blind_loss": float(blind["loss"][i]),
            })  # fmt: skip
    return rows


def csv_text(rows: list[dict]) -> str:
    """Rows of equal keys as CSV text, with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def save_png(figure, path: Path) -> None:
    """Write a matplotlib figure as a PNG, atomically."""
    write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=120, bbox_inches="tight"))


def _plot_fit(plt, law, records: list[RunRecord], params_kind: str, path: Path) -> None:
    observed = np.array([r.val_loss for r in records])
    predicted = np.array([law.predict(r.params_for(params_kind), r.tokens, r.unique_tokens) for r in records]).ravel()
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.scatter(predicted, observed, c=np.log10([r.epochs for r in records]), cmap="viridis", s=20)
    low, high = min(observed.min(), predicted.min()), max(observed.max(), predicted.max())
    axes.plot([low, high], [low, high], color="grey", linewidth=1)
    axes.set(xlabel="predicted loss", ylabel="observed validation loss", title="fit (colour: log10 epochs)")
    save_png(figure, path)
    plt.close(figure)


def _plot_epochs(plt, law, records: list[RunRecord], params_kind: str, path: Path) -> None:
    from matplotlib.ticker import NullFormatter

    budgets = sorted({r.unique_tokens for r in records})
    figure, panels = plt.subplots(1, len(budgets), figsize=(4 * len(budgets), 4), squeeze=False, sharey=True)
    top = max(r.epochs for r in records) * 2  # every panel shows the law out to the same repetition
    ticks = [2.0**k for k in range(int(np.log2(top)) + 1)]
    for axes, unique in zip(panels[0], budgets):
        runs = [r for r in records if r.unique_tokens == unique]
        sizes = sorted({r.params_for(params_kind) for r in runs})
        colours = plt.cm.plasma(np.linspace(0, 0.85, len(sizes)))
        epochs = np.geomspace(min(r.epochs for r in runs), top, 100)
        for size, colour in zip(sizes, colours):
            mine = [r for r in runs if r.params_for(params_kind) == size]
            axes.scatter([r.epochs for r in mine], [r.val_loss for r in mine], color=colour, s=18)
            axes.plot(epochs, law.predict(size, epochs * unique, unique), color=colour, linewidth=1,
                      label=f"N={format_quantity(size, 3)}")
        axes.set(xscale="log", xlabel="epochs", title=f"U = {format_quantity(unique, 3)} tokens")
        axes.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.legend(fontsize=7)
    panels[0][0].set_ylabel("validation loss")
    save_png(figure, path)
    plt.close(figure)


def _plot_frontier(plt, rows: list[dict], path: Path) -> None:
    budgets = sorted({row["unique_tokens"] for row in rows})
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(budgets)))
    for unique, colour in zip(budgets, colours):
        mine = [row for row in rows if row["unique_tokens"] == unique]
        flops = [row["flops"] for row in mine]
        label = f"U={format_quantity(unique, 3)}"
        left.plot(flops, [row["params"] for row in mine], color=colour, label=label)
        left.plot(flops, [row["blind_params"] for row in mine], color=colour, linestyle="--")
        right.plot(flops, [row["epochs"] for row in mine], color=colour, label=label)
        right.plot(flops, [row["blind_epochs"] for row in mine], color=colour, linestyle="--")
    left.set(xscale="log", yscale="log", xlabel="compute (FLOPs)", ylabel="optimal N", title="solid: data-constrained; dashed: repetition-blind")
    right.set(xscale="log", yscale="log", xlabel="compute (FLOPs)", ylabel="optimal epochs")
    left.legend(fontsize=7)
    save_png(figure, path)
    plt.close(figure)


def write_report(law_path: Path, records: list[RunRecord], failed: list[RunFailure], out_dir: Path,
                 contamination: dict[int, float] | None = None, rounds: list[dict] | None = None) -> Path:  # fmt: skip
    """Write the allocation table, the plots and report.md next to each other; return report.md.

    `contamination` maps each unique budget to the share of validation windows its training tokens hold
    (`stages.contamination.shares_at`); the report shows it when given. `rounds` are the suggestions of
    an active study (`stages.suggest`), in order: the report then shows the answer at their target per
    round (and writes it to `rounds.json`).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    law, document = read_law(law_path)
    params_kind = document.get("params_kind", "non_embedding")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = allocation_rows(law, compute_grid(records), sorted({r.unique_tokens for r in records}))
    write_text_atomic(out_dir / ALLOCATION, csv_text(rows))
    _plot_fit(plt, law, records, params_kind, out_dir / PLOTS["fit"])
    _plot_epochs(plt, law, records, params_kind, out_dir / PLOTS["epochs"])
    _plot_frontier(plt, rows, out_dir / PLOTS["frontier"])
    study = _rounds_markdown(law_path, rounds, records, out_dir) if rounds else ""
    text = _markdown(law, document, records, failed, rows) + repetition_markdown(law, records, params_kind)
    write_text_atomic(out_dir / REPORT, text + contamination_markdown(contamination) + study)
    return out_dir / REPORT


def _rounds_markdown(law_path: Path, rounds: list[dict], records: list[RunRecord], out_dir: Path) -> str:
    """Write `rounds.json` (the answer at the target per round) and return the report's section on it."""
    target = rounds[0]["target"]
    final = answer_at(law_path, target["flops"], target["unique_tokens"])
    table = round_rows(rounds, final, len(records), float(sum(record.flops for record in records)))
    write_text_atomic(out_dir / ROUNDS, json.dumps({"target": target, "rounds": table}, indent=2) + "\n")
    return rounds_markdown(table, target)


def intervals_at_bounds(document: dict) -> list[str]:
    """`name (lower)` / `name (upper)` for each bootstrap interval of a law.json that reaches its search box."""
    box, intervals = document.get("bounds") or {}, (document.get("intervals") or {}).get("params", {})
    edges = []
    for name, (low, high) in intervals.items():
        if name in box:
            edges += [f"{name} ({side})" for side, end, bound in (("lower", low, box[name][0]), ("upper", high, box[name][1]))
                      if math.isclose(end, bound, rel_tol=1e-6)]  # fmt: skip
    return edges


def fit_checks(document: dict) -> list[str]:
    """The law's own checks, one line each: parameters on a bound of the search box, bootstrap intervals that
    reach one, and the leave-out extrapolation."""
    at_bounds = list(dict.fromkeys(document.get("at_bounds") or []))
    lines = [f"Parameters on a bound of the fit's search box: {', '.join(at_bounds) if at_bounds else 'none'}."]
    if document.get("intervals"):
        edges = intervals_at_bounds(document)
        lines.append("Bootstrap intervals that reach a bound of the search box: "
                     + (f"{', '.join(edges)}; the runs do not pin these." if edges else "none."))
    check = document.get("diagnostics", {}).get("extrapolation")
    if check and "skipped" in check:
        lines.append(f"Leave-out check skipped: {check['skipped']}.")
    elif check:
        lines.append(f"Leave-out check: fitted on the {check['n_fit']} runs with 6ND <= {check['threshold_flops']:.3g} FLOPs, the "
                     f"{check['n_held_out']} others predicted with mean absolute relative error "
                     f"{check['mean_abs_relative_error']:.2%} (largest absolute error {check['max_abs_error']:.3f}).")
    return lines


def _markdown(law, document: dict, records: list[RunRecord], failed: list[RunFailure], rows: list[dict]) -> str:
    bounds = document.get("intervals") or {}
    intervals = bounds.get("params", {})
    partial = [f"partial: {len(records)} of {len(records) + len(failed)} runs finished; the fit and the allocation "
               f"rest on those alone.", ""] if failed else []
    lines = [
        "# Sweep report", "", *partial,
        f"{len(records)} runs fitted" + (f"; {len(failed)} failed and were left out: "
                                         + ", ".join(f"{f.name} ({f.reason})" for f in failed) if failed else "") + ".",
        "", "## Fitted law", "",
        f"| parameter | value | {bounds['confidence']:.0%} bootstrap interval |" if bounds else "| parameter | value | interval |",
        "| --- | --- | --- |",
    ]  # fmt: skip
    for name, value in law.params().items():
        interval = intervals.get(name)
        shown = f"[{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""
        lines.append(f"| {name} | {value:.6g} | {shown} |")
    diagnostics = document.get("diagnostics", {})
    lines += ["", f"R² (log loss) {diagnostics.get('r2_log_loss', float('nan')):.4f}, "
                  f"RMSE (log loss) {diagnostics.get('rmse_log_loss', float('nan')):.4g}. Full fit in [law.json](law.json), "
                  f"runs in [runs.csv](runs.csv).", "", *fit_checks(document), ""]  # fmt: skip
    lines += ["## Allocation", "", f"Every row of [allocation.csv](allocation.csv) (excerpt):", "",
              "| compute | U | N* | D* | epochs* | loss | repetition-blind N | its loss |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows[:: max(1, len(rows) // 12)]:
        lines.append(
            f"| {row['flops']:.3g} | {format_quantity(row['unique_tokens'])} | {format_quantity(row['params'])} | "
            f"{format_quantity(row['tokens'])} | {row['epochs']:.3g} | {row['loss']:.4f} | "
            f"{format_quantity(row['blind_params'])} | {row['blind_loss']:.4f} |"
        )
    lines += ["", "## Plots", ""] + [f"![{key}]({name})" for key, name in PLOTS.items()] + [""]
    return "\n".join(lines)


def contamination_markdown(shares: dict[int, float] | None) -> str:
    """The report's section on the validation split's contamination at each unique budget ('' without one)."""
    if not shares:
        return ""
    lines = ["", "## Validation contamination", "",
             f"Share of the validation split's {WINDOW}-token windows (within one document) that occur verbatim in the "
             "first U tokens of the training region: what a run with budget U may have memorised of what it is scored on.", "",
             "| U | contaminated windows |", "| --- | --- |"]  # fmt: skip
    lines += [f"| {format_quantity(budget)} | {share:.2%} |" for budget, share in sorted(shares.items())]
    return "\n".join(lines + [""])
