"""Benchmarks of the scaling core, each against a baseline measured in the same run.

1. Repetition-only fit (R_D*, R_N*; C4 base fixed) on the 182 C4 runs: ours vs the published
   procedure (PyTorch L-BFGS, 16 starts x 50 steps; bench/torch_lbfgs_baseline.py). Target >= 20x,
   objective no worse.
2. Joint 7-parameter fit from 4,096 starts: time vs that baseline. Target: less.
3. 1,000-resample bootstrap of the repetition-only fit: time vs that baseline. Target: less.
4. Allocation: (C, U) queries per second in one vectorised call (target >= 10,000/s), beside a
   per-query loop of scipy's bounded scalar minimiser over log N (same law) as the baseline.

Every timing, ours and the baselines alike, is the best of REPEATS calls after WARMUP untimed ones.

Run: .venv/bin/python bench/bench_scaling.py
"""

from __future__ import annotations

import math
import platform
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from timing import REPEATS, WARMUP, timed  # noqa: E402
from torch_lbfgs_baseline import C4_BASE, fit_repetition_torch  # noqa: E402

from scaling.allocate import allocate  # noqa: E402
from scaling.bootstrap import bootstrap  # noqa: E402
from scaling.fit import FitSpec, fit  # noqa: E402
from scaling.laws import preset  # noqa: E402
from scaling.objective import RD_STAR  # noqa: E402
from scaling.runs import read_csv_runs  # noqa: E402

def scipy_allocation_loop(law, flops, unique):
    """Baseline: one bounded scalar minimisation over log N per query."""
    out = []
    for c, u in zip(flops, unique):
        log_c6 = math.log(c / 6.0)
        res = minimize_scalar(lambda x: float(law.predict(math.exp(x), math.exp(log_c6 - x), u)),
                              bounds=(0.5 * log_c6 - 14, 0.5 * log_c6 + 14), method="bounded",
                              options={"xatol": 1e-10})
        out.append(res.fun)
    return np.array(out)


def main() -> None:
    runs = read_csv_runs(REPO / "examples" / "datablations_c4.csv")
    c4 = preset("c4")
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, python {platform.python_version()}, "
          f"numpy {np.__version__}; each time the best of {REPEATS} after {WARMUP} warm-up call(s)")

    base_s, base = timed(lambda: fit_repetition_torch(runs.params, runs.tokens, runs.unique_tokens, runs.loss,
                                                      base=C4_BASE))
    spec = FitSpec(method="repetition", base=c4.base)
    ours_s, ours = timed(lambda: fit(runs, spec))
    print(f"[1] repetition-only fit: baseline {base_s:.2f} s (R_D* {base['rd_star']:.4f}, R_N* {base['rn_star']:.4f}, "
          f"objective {base['objective']:.12g}); ours {ours_s:.3f} s (R_D* {ours.law.rd_star:.4f}, "
          f"R_N* {ours.law.rn_star:.4f}, objective {ours.objective:.12g}, {ours.starts} starts)")
    print(f"    speed-up {base_s / ours_s:.1f}x (target >= 20x); objective no worse: {ours.objective <= base['objective']}")

    joint_s, joint = timed(lambda: fit(runs, FitSpec(method="joint")))
    print(f"[2] joint 7-parameter fit from {joint.starts} starts: {joint_s:.2f} s = {joint_s / base_s:.2f}x the "
          f"baseline's time (target < 1); objective {joint.objective:.10g}")

    boot_s, samples = timed(lambda: bootstrap(runs, ours, resamples=1000, seed=0))
    print(f"[3] bootstrap, 1000 resamples of the repetition-only fit: {boot_s:.2f} s = {boot_s / base_s:.2f}x the "
          f"baseline's time (target < 1); R_D* 95% [{np.percentile(samples[:, RD_STAR], 2.5):.2f}, "
          f"{np.percentile(samples[:, RD_STAR], 97.5):.2f}]")

    rng = np.random.default_rng(0)
    queries = 100_000
    flops, unique = 10 ** rng.uniform(18, 25, queries), 10 ** rng.uniform(8, 13, queries)
    alloc_s, result = timed(lambda: allocate(c4, flops, unique))
    loop_n = 300
    loop_s, loop_loss = timed(lambda: scipy_allocation_loop(c4, flops[:loop_n], unique[:loop_n]))
    ours_qps, loop_qps = queries / alloc_s, loop_n / loop_s
    not_worse = bool((result.loss[:loop_n] <= loop_loss + 1e-12).all())
    print(f"[4] allocation: {ours_qps:,.0f} queries/s in one call of {queries:,} (target >= 10,000/s); "
          f"scipy loop {loop_qps:,.0f} queries/s; ratio {ours_qps / loop_qps:.1f}x; loss <= loop's on all "
          f"{loop_n}: {not_worse}")


if __name__ == "__main__":
    main()
