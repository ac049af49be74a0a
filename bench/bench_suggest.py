"""Simulation benchmark of `dcsl suggest`: equal FLOPs spent by extending a grid, or by rounds of suggest.

A known truth (the C4 preset; the Chinchilla base law with R_D* = 5, R_N* = 10) gives every run's
loss times 1% log-normal noise. Both strategies start from one small grid (3 sizes x 2 unique
budgets x epochs 1 and 4, the same noisy losses) and ask about the target C = 1e22 FLOPs, U = 25B:

* grid: extend it the usual way, alternately the next epoch count (x2: 8, 16, 32) over every
  size and budget, and the next size (x2: 160M, 320M, 640M) over every budget and epoch count;
* suggest: rounds of `scaling.suggest` (at most COUNT runs a round, the default candidates with
  epochs up to MAX_EPOCHS), each on a fresh fit and bootstrap of the runs so far; a round's budget
  is what brings the spend to the next checkpoint: half of each grid step's cumulative FLOPs, then
  all of it (what a round leaves unspent passes to the next).

After every step both refit and are scored on the answer at the target: |log N*| error (log D*
has the same) and |log L*| error (the predicted loss), against the truth. Medians over SEEDS seeds.
The target: suggest reaches the grid's errors with at most half its FLOPs (the "half" checkpoints
are nominal: suggest spends at most that, often less), or has >= 2x lower errors at equal FLOPs.

Fit: repetition-only (R_D*, R_N*) with the base law fixed to the truth's, as the published C4 law
was fitted; DRAWS bootstrap draws (both choices keep the run time down on 2 CPUs).

Run: .venv/bin/python bench/bench_suggest.py [OUT_DIR] [--seeds N] [--count K] [--max-epochs E]
(the PNG of both curves goes to OUT_DIR, default a temporary folder; 20 seeds take ~2 min on 2 CPUs)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaling.allocate import allocate  # noqa: E402
from scaling.bootstrap import bootstrap  # noqa: E402
from scaling.fit import FitSpec, fit  # noqa: E402
from scaling.laws import DataConstrainedLaw, preset  # noqa: E402
from scaling.runs import RunTable  # noqa: E402
from scaling.suggest import budget_ladder, candidate_runs, size_ladder, suggest  # noqa: E402

TRUTHS = {"c4": preset("c4"),
          "chinchilla, R_D*=5, R_N*=10": DataConstrainedLaw(**preset("chinchilla").params(), rd_star=5.0, rn_star=10.0)}
FLOPS, UNIQUE = 1e22, 25e9
NOISE = 0.01
SIZES, BUDGETS, EPOCHS = [20e6, 40e6, 80e6], [100e6, 400e6], [1.0, 4.0]
STEPS = 6
DRAWS = 50
COUNT = 8
MAX_EPOCHS = 16
SEEDS = 20


def grid_steps() -> list[np.ndarray]:
    """The initial grid, then each extension's new runs: (n, 3) arrays of N, D, U."""
    sizes, epochs = list(SIZES), list(EPOCHS)

    def points(ns, es):
        return np.array([(n, u * e, u) for n in ns for u in BUDGETS for e in es])

    steps = [points(sizes, epochs)]
    for step in range(STEPS):
        if step % 2 == 0:
            epochs.append(2 * epochs[-1] if epochs[-1] > 4 else 8.0)
            steps.append(points(sizes, epochs[-1:]))
        else:
            sizes.append(2 * sizes[-1])
            steps.append(points(sizes[-1:], epochs))
    return steps


class Study:
    """Runs observed so far under one truth; new runs' losses get noise from `rng`."""

    def __init__(self, truth, rng, runs: np.ndarray, loss: np.ndarray):
        self.truth, self.rng, self.runs, self.loss = truth, rng, runs, loss

    def add(self, runs: np.ndarray) -> "Study":
        """The study with `runs` (n, 3: N, D, U) trained and evaluated."""
        loss = self.truth.predict(runs[:, 0], runs[:, 1], runs[:, 2]) * np.exp(self.rng.normal(0.0, NOISE, len(runs)))
        return Study(self.truth, self.rng, np.vstack([self.runs, runs]), np.concatenate([self.loss, loss]))

    def table(self) -> RunTable:
        """The runs as a run table."""
        return RunTable(self.runs[:, 0], self.runs[:, 1], self.runs[:, 2], self.loss,
                        tuple(f"run{i}" for i in range(len(self.loss))))

    @property
    def flops(self) -> float:
        """Compute spent on all runs, 6 N D summed."""
        return float((6 * self.runs[:, 0] * self.runs[:, 1]).sum())


def errors(law, truth) -> tuple[float, float]:
    """|log N*| and |log L*| errors of a fitted law's answer at the target."""
    ours, true = allocate(law, FLOPS, UNIQUE), allocate(truth, FLOPS, UNIQUE)
    return abs(float(np.log(ours.params / true.params))), abs(float(np.log(ours.loss / true.loss)))


def suggest_round(study: Study, result, budget: float, seed: int, count: int = COUNT,
                  max_epochs: int = MAX_EPOCHS) -> Study:
    """The study with one round of at most `count` suggestions (within `budget` FLOPs) trained."""
    table = study.table()
    candidates = candidate_runs(size_ladder(table), budget_ladder(table, UNIQUE), max_epochs)
    if budget < candidates.flops.min():
        return study
    samples = bootstrap(table, result, DRAWS, seed)
    chosen = suggest(samples, result.law, table, candidates, FLOPS, UNIQUE, budget, count).chosen
    return study.add(np.column_stack([candidates.params, candidates.tokens, candidates.unique_tokens])[chosen])


def run_seed(truth, seed: int, count: int = COUNT, max_epochs: int = MAX_EPOCHS) -> dict[str, np.ndarray]:
    """Per strategy, rows (added FLOPs, error log N*, error log L*, runs) after each step, for one seed."""
    spec = FitSpec(method="repetition", base=truth.base)
    steps = grid_steps()
    start = Study(truth, np.random.default_rng([seed, 0]), np.empty((0, 3)), np.empty(0)).add(steps[0])
    first = fit(start.table(), spec)
    grid, study = [(0.0, *errors(first.law, truth), len(start.loss))], start
    for runs in steps[1:]:
        study = study.add(runs)
        grid.append((study.flops - start.flops, *errors(fit(study.table(), spec).law, truth), len(study.loss)))
    checkpoints = [spend for row in grid[1:] for spend in (row[0] / 2, row[0])]
    curve, result = [grid[0]], first
    study = Study(truth, np.random.default_rng([seed, 1]), start.runs, start.loss)  # the same start, new noise
    for checkpoint in checkpoints:
        study = suggest_round(study, result, checkpoint - (study.flops - start.flops), seed, count, max_epochs)
        result = fit(study.table(), spec)
        curve.append((study.flops - start.flops, *errors(result.law, truth), len(study.loss)))
    return {"grid": np.array(grid), "suggest": np.array(curve), "checkpoints": np.array([0.0, *checkpoints])}


def plot(results: dict, out_dir: Path) -> Path:
    """Median errors against FLOPs added (suggest: the median actually spent), one row per truth: a PNG in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(10, 4 * len(results)), squeeze=False)
    for row, (name, summary) in enumerate(results.items()):
        for col, label in enumerate(("|log N*|", "|log L*|")):
            ax = axes[row, col]
            for strategy, x, colour in (("grid", summary["grid_flops"], "tab:grey"),
                                        ("suggest", summary["spent"], "tab:blue")):
                ax.plot(x[1:], summary[strategy][1:, col], marker="o", color=colour, label=strategy)
            ax.axhline(summary["grid"][0, col], color="black", linewidth=0.5, linestyle=":", label="initial grid")
            ax.set(xscale="log", yscale="log", xlabel="FLOPs added to the initial grid",
                   ylabel=f"median {label} error at C = 1e22, U = 25B", title=name)
            ax.legend()
    figure.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench_suggest.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def summarise(name: str, seeds: list[dict]) -> dict:
    """Medians over seeds, printed as a table, and the verdict on the target."""
    grid = np.median(np.stack([s["grid"][:, 1:] for s in seeds]), axis=0)  # error N, error L, runs
    ours = np.median(np.stack([s["suggest"][:, 1:] for s in seeds]), axis=0)
    grid_flops = seeds[0]["grid"][:, 0]
    spent = np.median(np.stack([s["suggest"][1:, 0] / s["checkpoints"][1:] for s in seeds]), axis=0)
    print(f"\n{name}: medians over {len(seeds)} seeds of the errors at the target (C = {FLOPS:g}, U = {UNIQUE:g})")
    print(f"  start, the initial grid of {grid[0, 2]:.0f} runs: |log N*| {grid[0, 0]:.4f}, |log L*| {grid[0, 1]:.5f}")
    print("  FLOPs added | grid: |log N*|  |log L*|  runs | suggest, half the FLOPs: |log N*|  |log L*|  runs "
          "| suggest, equal FLOPs: |log N*|  |log L*|  runs")
    half_ok, ratios = 0, []
    for k in range(1, len(grid_flops)):
        half, equal = ours[2 * k - 1], ours[2 * k]
        print(f"  {grid_flops[k]:11.3g} | {grid[k, 0]:14.4f} {grid[k, 1]:9.5f} {grid[k, 2]:5.0f} | "
              f"{half[0]:32.4f} {half[1]:9.5f} {half[2]:5.0f} | {equal[0]:29.4f} {equal[1]:9.5f} {equal[2]:5.0f}")
        half_ok += bool(half[0] <= grid[k, 0] and half[1] <= grid[k, 1])
        ratios.append(grid[k, :2] / equal[:2])
    ratios = np.array(ratios)
    print(f"  suggest with half the grid's FLOPs at least as good on both errors: {half_ok} of {len(ratios)} steps")
    print(f"  error ratio grid / suggest at equal FLOPs: |log N*| {', '.join(f'{r:.2f}' for r in ratios[:, 0])}; "
          f"|log L*| {', '.join(f'{r:.2f}' for r in ratios[:, 1])}")
    print(f"  FLOPs suggest spent, as a fraction of each checkpoint (median): {', '.join(f'{x:.2f}' for x in spent)}")
    return {"grid": grid, "suggest": ours, "grid_flops": grid_flops,
            "spent": np.median(np.stack([s["suggest"][:, 0] for s in seeds]), axis=0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=None, help="where the PNG goes (default: a temp dir)")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds per truth")
    parser.add_argument("--count", type=int, default=COUNT, help="runs a suggest round may add at most")
    parser.add_argument("--max-epochs", type=int, default=MAX_EPOCHS, help="candidate epochs 1..E")
    args = parser.parse_args()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_suggest-"))
    started = time.perf_counter()
    print(f"noise {NOISE:.0%} log-normal; {DRAWS} bootstrap draws; at most {args.count} runs a suggest round; "
          f"candidate epochs up to {args.max_epochs}")
    results = {name: summarise(name, [run_seed(truth, seed, args.count, args.max_epochs) for seed in range(args.seeds)])
               for name, truth in TRUTHS.items()}
    print(f"\nplot: {plot(results, out_dir)}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
