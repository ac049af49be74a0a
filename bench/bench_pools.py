"""Benchmarks of the pool laws (`multi-pool`), each against a baseline measured in the same run.

1. Repetition-only multi-pool fit (3 pools: q_2, q_3, R*_1..3, R_N*; base fixed), 400 synthetic runs,
   64 starts: ours (one batched L-BFGS over all starts, central differences in the same call, halving,
   polish) vs a loop of scipy L-BFGS-B (its own finite differences) from the same 64 starts.
   Reports the time ratio and both objectives.
2. Allocation across 3 pools for 64 compute budgets: one vectorised call vs a loop of one call per
   budget (the same method). Reports queries per second and the largest loss difference.

Every timing is the best of 3 calls after one untimed one (`bench/timing.py`).

Run: .venv/bin/python bench/bench_pools.py
"""

from __future__ import annotations

import math
import platform
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from pool_runs import BASE, MULTI_POOL_TRUTH, pool_runs  # noqa: E402
from timing import timed  # noqa: E402

from scaling.laws import BaseLaw  # noqa: E402
from scaling.pool_allocate import allocate_pools  # noqa: E402
from scaling.pool_fit import PoolData, PoolFitSpec, PoolProblem, fit_pools  # noqa: E402


def scipy_loop(problem: PoolProblem, data: PoolData) -> float:
    """Baseline: scipy's L-BFGS-B from every start in turn, finite-difference gradients; the best objective."""
    best = math.inf
    for start in problem.starts():
        result = minimize(lambda z: float(problem.objective(z[None, :], data)[0]), start, method="L-BFGS-B",
                          bounds=list(zip(problem.lower, problem.upper)))
        best = min(best, float(result.fun))
    return best


def main() -> None:
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; python {platform.python_version()}, "
          f"numpy {np.__version__}")
    table = pool_runs(MULTI_POOL_TRUTH, n=400, seed=1)
    spec = PoolFitSpec("multi-pool", BaseLaw(**BASE))
    problem, data = PoolProblem(spec, table.pools), PoolData.from_table(table)
    ours_s, result = timed(lambda: fit_pools(table, spec))
    base_s, base_f = timed(lambda: scipy_loop(problem, data))
    print(f"[1] multi-pool fit, 400 runs, {len(problem.starts())} starts: scipy loop {base_s:.3f} s "
          f"(objective {base_f:.10g}); ours {ours_s:.3f} s (objective {result.objective:.10g}): "
          f"{base_s / ours_s:.1f}x faster")

    flops = np.geomspace(1e17, 1e23, 64)
    unique = np.array([2e9, 5e10, 3e8])
    one_s, together = timed(lambda: allocate_pools(MULTI_POOL_TRUTH, flops, unique))
    loop_s, apart = timed(lambda: [allocate_pools(MULTI_POOL_TRUTH, [c], unique).loss[0] for c in flops])
    gap = float(np.max(np.abs(together.loss - np.array(apart))))
    print(f"[2] allocation, 3 pools, {len(flops)} budgets: per-budget loop {len(flops) / loop_s:.1f} queries/s, "
          f"one call {len(flops) / one_s:.1f} queries/s: {loop_s / one_s:.1f}x; max |loss difference| {gap:.2e}")


if __name__ == "__main__":
    main()
