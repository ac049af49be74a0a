"""Fitting the pool laws (`multi-pool`, `qqt`) to multi-pool run tables, the way `scaling.fit` fits one pool.

Log-space Huber (delta 1e-3) on log-loss, a grid of starts advanced together by the batched L-BFGS of
`scaling.optimize` with successive halving, the best finalists polished by scipy's L-BFGS-B.
Methods: ``repetition`` fixes the base law (E, A, B, alpha, beta) from a preset or a law.json and
fits each pool's quality (but the reference's, q_1 = 1) and decay constant, and R_N* for
`multi-pool`; ``joint`` fits the base law too. The gradient is a batched central difference
(`scaling.optimize.central_differences`): every row's neighbours go through the same vectorised call.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize

from scaling.bootstrap import resample_weights
from scaling.diagnostics import leave_out_check
from scaling.errors import InputError
from scaling.fit import DEFAULT_BOUNDS, POLISHED, halving_schedule
from scaling.laws import BASE_PARAM_NAMES, BaseLaw
from scaling.objective import HUBER_DELTA, huber
from scaling.optimize import batched_lbfgs, central_differences
from scaling.pool_laws import PoolLaw, pool_law_class, split_pools
from scaling.runs import RunTable

# Search box and start values (log space for E, A, B and the qualities) of the laws' own parameters.
OWN_BOUNDS = {"rn_star": (1e-3, 100.0), "rd_star": (1e-3, 100.0), "tau": (1e-2, 1e3),
              "q": (math.log(1e-3), math.log(1e3)), "u": (math.log(1e-3), math.log(1e3))}
OWN_STARTS = {"rn_star": [2.0, 20.0], "rd_star": [2.0, 20.0], "tau": [1.0, 10.0], "q": [-1.0, 0.0], "u": [-1.0, 0.0]}
JOINT_OWN_START = {"rn_star": 5.0, "rd_star": 10.0, "tau": 4.0, "q": -0.5, "u": -0.5}
BASE_STARTS = {"e": [0.0, 1.0], "a": [3.0, 8.0], "b": [3.0, 8.0], "alpha": [0.3, 0.6], "beta": [0.3, 0.6]}
_LOG_NAME = {"E": "e", "A": "a", "B": "b"}


class PoolData(NamedTuple):
    """Per-run arrays of a multi-pool table: N (n,), D_i, U_Di, R_i (n, P), log-loss (n,)."""

    params: np.ndarray
    tokens: np.ndarray
    seen: np.ndarray
    repeats: np.ndarray
    log_loss: np.ndarray

    @classmethod
    def from_table(cls, table: RunTable) -> "PoolData":
        """The arrays of a table with pool columns; InputError for a one-pool table."""
        if not table.pools:
            raise InputError("runs", f"{table.source} has no per-pool columns (tokens.<pool>, unique_tokens.<pool>); "
                                     f"the pool laws need them")
        seen, repeats = split_pools(table.pool_tokens, table.pool_unique)
        return cls(table.params, table.pool_tokens, seen, repeats, np.log(table.loss))


def _family(name: str) -> str:
    return name.partition(".")[0]


@dataclass(frozen=True)
class PoolFitSpec:
    """What to fit: the pool law, the method and, for ``repetition``, the fixed base law."""

    law: str
    base: BaseLaw | None = None
    delta: float = HUBER_DELTA

    def __post_init__(self):
        pool_law_class(self.law)

    @property
    def method(self) -> str:
        """``repetition`` with a fixed base law, ``joint`` without."""
        return "joint" if self.base is None else "repetition"


class PoolProblem:
    """The free variables of a pool fit (theta space), their box and starts, and the batched objective."""

    def __init__(self, spec: PoolFitSpec, pools: tuple[str, ...]):
        self.cls = pool_law_class(spec.law)
        self.pools = pools
        self.spec = spec
        logged = set(self.cls.logged(pools))
        names = self.cls.free_names(pools)
        fixed = {f"{self.cls.quality}.{pools[0]}": 1.0}
        if spec.base is not None:
            fixed.update(spec.base.params())
            names = tuple(n for n in names if n not in BASE_PARAM_NAMES)
        self.free = names
        self.fixed = fixed
        self.logged = tuple(n for n in names if n in logged)
        box = [self._box(n) for n in names]
        self.lower, self.upper = np.array([b[0] for b in box]), np.array([b[1] for b in box])

    def _box(self, name: str) -> tuple[float, float]:
        if name in BASE_PARAM_NAMES:
            return DEFAULT_BOUNDS[_LOG_NAME.get(name, name)]
        return OWN_BOUNDS[_family(name)]

    def theta_names(self) -> list[str]:
        """Names of the free variables as held (log_<name> for logged ones)."""
        return [f"log_{n}" if n in self.logged else n for n in self.free]

    def starts(self) -> np.ndarray:
        """The start grid: two values per own parameter (fixed base), or the base grid with own mid-values (joint)."""
        if self.spec.base is None:
            values = [BASE_STARTS[_LOG_NAME.get(n, n)] if n in BASE_PARAM_NAMES else [JOINT_OWN_START[_family(n)]]
                      for n in self.free]
        else:
            values = [OWN_STARTS[_family(n)] for n in self.free]
        return np.clip(np.array(list(itertools.product(*values)), dtype=float), self.lower, self.upper)

    def params(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Linear parameter arrays (K, 1) of free rows z (K, F), fixed values included."""
        p = {n: np.full((z.shape[0], 1), v) for n, v in self.fixed.items()}
        for j, name in enumerate(self.free):
            column = z[:, j, None]
            p[name] = np.exp(column) if name in self.logged else column
        return p

    def law(self, z: np.ndarray) -> PoolLaw:
        """The law of one free vector z (F,)."""
        p = self.params(z[None, :])
        return self.cls(self.pools, {n: float(v[0, 0]) for n, v in p.items()})

    def objective(self, z: np.ndarray, data: PoolData, weights: np.ndarray | None = None) -> np.ndarray:
        """Weighted Huber of log-loss residuals (K,) for free rows z (K, F); weights (n,) or (K, n)."""
        p = self.params(z)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            predicted = self.cls.loss(p, self.pools, data.params, data.tokens[None], data.seen[None], data.repeats[None])
            value, _ = huber(np.log(predicted) - data.log_loss, self.spec.delta)
            f = (value * (1.0 if weights is None else weights)).sum(axis=-1)
        return np.where(np.isfinite(f), f, np.inf)

    def batched(self, data: PoolData, weights: np.ndarray | None = None):
        """fun(z, rows) -> (f, central-difference gradient) for `batched_lbfgs`; weights (K, n) per row."""
        return central_differences(lambda z, rows: self.objective(z, data, None if weights is None else weights[rows]))


@dataclass(frozen=True)
class PoolFitResult:
    """A fitted pool law, its free vector (theta space), the objective and how it was fitted."""

    law: PoolLaw
    z: np.ndarray
    objective: float
    problem: PoolProblem
    starts: int
    n_runs: int
    at_bounds: tuple[str, ...]


def _polish(problem: PoolProblem, data: PoolData, z0: np.ndarray) -> tuple[np.ndarray, float]:
    fun = problem.batched(data)

    def single(z):
        f, g = fun(z[None, :], np.zeros(1, dtype=int))
        return float(f[0]), g[0]
    result = minimize(single, z0, jac=True, method="L-BFGS-B", bounds=list(zip(problem.lower, problem.upper)),
                      options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
    return result.x, float(result.fun)


def fit_pools(table: RunTable, spec: PoolFitSpec) -> PoolFitResult:
    """Fit `spec` to the pool runs of `table`; the best law over the start grid."""
    data = PoolData.from_table(table)
    problem = PoolProblem(spec, table.pools)
    if len(table) <= len(problem.free):
        raise InputError("runs", f"{len(table)} runs for {len(problem.free)} free parameters; "
                                 f"need at least {len(problem.free) + 1}")
    starts = problem.starts()
    result = batched_lbfgs(problem.batched(data), starts, problem.lower, problem.upper, max_iter=1000,
                           halving=halving_schedule(len(starts)))
    finalists = np.flatnonzero(~result.retired)
    best_z, best_f = None, math.inf
    for row in finalists[np.argsort(result.f[finalists])[:POLISHED]]:
        z, f = _polish(problem, data, result.x[row])
        if result.f[row] < f:
            z, f = result.x[row], float(result.f[row])
        if f < best_f:
            best_z, best_f = z, f
    span = problem.upper - problem.lower
    on_bound = np.minimum(best_z - problem.lower, problem.upper - best_z) <= 1e-6 * span
    return PoolFitResult(problem.law(best_z), best_z, best_f, problem, len(starts), len(table),
                         tuple(n for n, hit in zip(problem.free, on_bound) if hit))


def bootstrap_pools(table: RunTable, result: PoolFitResult, resamples: int, seed: int = 0,
                    max_iter: int = 500) -> np.ndarray:
    """Free vectors (resamples, F), one per resample of the runs, each fitted from the optimum."""
    data = PoolData.from_table(table)
    weights = resample_weights(len(table), resamples, seed)
    start = np.repeat(result.z[None, :], resamples, axis=0)
    problem = result.problem
    return batched_lbfgs(problem.batched(data, weights), start, problem.lower, problem.upper, max_iter=max_iter).x


def pool_predictions(law: PoolLaw, table: RunTable) -> np.ndarray:
    """The law's loss for every run of a pool table."""
    return law.predict(table.params, table.pool_tokens, table.pool_unique)



def pool_extrapolation_check(table: RunTable, spec: PoolFitSpec, threshold: float | None = None) -> dict:
    """The leave-out check of a pool law: fit `spec` on runs with C = 6ND <= threshold (default: the 75th
    percentile), score the runs above it (`scaling.diagnostics.leave_out_check`)."""

    def fit_and_predict(train: RunTable, test: RunTable) -> tuple[np.ndarray, dict]:
        law = fit_pools(train, spec).law
        return pool_predictions(law, test), law.params()

    return leave_out_check(table, threshold, fit_and_predict)
