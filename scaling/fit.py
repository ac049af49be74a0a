"""Fitting the laws to runs: log-space Huber, a large grid of starts, batched L-BFGS, scipy polish.

Methods (`FitSpec.method`):

* ``base``        the base law's five parameters on all runs (repetition ignored);
* ``repetition``  R_D*, R_N* with the base law fixed (a preset or a previous fit): how the
                  published C4 law was obtained;
* ``joint``       all seven parameters at once;
* ``two-stage``   the base law and R_N* on the runs that saw their data once (D <= U, so R_D* plays
                  no part; R_N* absorbs runs with excess parameters), then ``repetition``.

Any parameter can be fixed; alpha and beta can be tied; every bound can be moved. Every start of
the grid is optimised by the batched L-BFGS of `scaling.optimize`; a halving schedule keeps the
best quarter after 4, 12, 28, ... iterations until `FINALISTS` run to convergence, and the best few
are polished with scipy's L-BFGS-B.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
from scipy.optimize import minimize

from scaling.errors import InputError
from scaling.laws import PARAM_NAMES, BaseLaw, DataConstrainedLaw, Law, law_from_params, param_names, unknown_law
from scaling.objective import ALPHA, BASE, BETA, HUBER_DELTA, R_STARS, RN_STAR, THETA_NAMES, FitData, objective
from scaling.optimize import batched_lbfgs
from scaling.runs import RunTable

METHODS = ("base", "repetition", "joint", "two-stage")
EVERY_PARAM = tuple(range(len(THETA_NAMES)))  # theta positions a stage may fit
BASE_PARAMS = EVERY_PARAM[BASE]
_LOG_OF = {"E": "e", "A": "a", "B": "b"}
# The search box (log space for e, a, b). R_D*, R_N* default to (0, 20], the region the published
# procedure searched: on the C4 runs the objective is a long flat valley with a second, 0.13% lower
# basin near R_D* = 95, R_N* = 1.7; widen the bounds to search it. A result on a bound is flagged.
DEFAULT_BOUNDS = {"e": (-20.0, 20.0), "a": (-20.0, 60.0), "b": (-20.0, 60.0), "alpha": (1e-2, 3.0),
                  "beta": (1e-2, 3.0), "rd_star": (1e-3, 20.0), "rn_star": (1e-3, 20.0)}
# What any bound may be: keeps the objective's unshifted LSE finite and exponents and R* positive.
HARD_LIMITS = {"e": (-100.0, 100.0), "a": (-100.0, 300.0), "b": (-100.0, 300.0), "alpha": (0.0, 10.0),
               "beta": (0.0, 10.0), "rd_star": (0.0, 1e6), "rn_star": (0.0, 1e6)}
# Start values of the base parameters (log space for e, a, b); the grid is their full product.
BASE_GRID = {"e": [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5], "a": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
             "b": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0], "alpha": [0.0, 0.5, 1.0, 1.5, 2.0],
             "beta": [0.0, 0.5, 1.0, 1.5, 2.0]}
JOINT_GRID = {"e": [-1.0, 0.0, 0.5, 1.0], "a": [0.0, 5.0, 10.0, 20.0], "b": [0.0, 5.0, 10.0, 20.0],
              "alpha": [0.2, 0.5, 1.0, 1.5], "beta": [0.2, 0.5, 1.0, 1.5]}
# Values of the parameters a stage neither fits nor takes from a base law or a fixed value.
PLACEHOLDERS = {"e": 0.0, "a": 0.0, "b": 0.0, "alpha": 0.5, "beta": 0.5, "rd_star": 1.0, "rn_star": 1.0}
R_STAR_STARTS = {"repetition": 16, "joint": 2}  # per R*, log-spaced over the bounds (capped to [0.1, 1000])
FINALISTS = 16  # starts that run to convergence after the halving rounds
POLISHED = 4  # best finalists polished by scipy's L-BFGS-B


def theta_name(name: str) -> str:
    """Map a parameter name (E, A, B, e, a, b, alpha, beta, rd_star, rn_star) to its log-space name."""
    key = _LOG_OF.get(name, name)
    if key not in THETA_NAMES:
        raise InputError("parameter", f"{name!r} is not a law parameter; choose one of {', '.join(PARAM_NAMES)} "
                                      f"(or e, a, b for log E, log A, log B)")
    return key


def _to_log(name: str, value: float, what: str) -> float:
    value = float(value)
    if name in _LOG_OF:
        if not value > 0:
            raise InputError(what, f"{name} = {value:g} must be > 0")
        return math.log(value)
    return value


def fixed_to_theta(fixed: Mapping[str, float], lower: np.ndarray, upper: np.ndarray) -> dict[str, float]:
    """Fixed values keyed by log-space name (E, A, B given linearly are logged), checked against the box."""
    out = {}
    for name, value in fixed.items():
        key = theta_name(name)
        logged = _to_log(name, value, "fix")
        j = THETA_NAMES.index(key)
        if not lower[j] <= logged <= upper[j]:
            raise InputError("fix", f"{name} = {float(value):g} is outside its bounds "
                                    f"[{_show(name, lower[j])}, {_show(name, upper[j])}]")
        out[key] = logged
    return out


def _show(name: str, log_value: float) -> str:
    return f"{math.exp(log_value):g}" if name in _LOG_OF else f"{log_value:g}"


def resolve_bounds(bounds: Mapping[str, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds (7,) in log space: the defaults with `bounds` (any naming) applied."""
    box = dict(DEFAULT_BOUNDS)
    for name, (lo, hi) in bounds.items():
        key = theta_name(name)
        lo, hi = _to_log(name, lo, "bound"), _to_log(name, hi, "bound")
        hard_lo, hard_hi = HARD_LIMITS[key]
        if not (hard_lo <= lo < hi <= hard_hi) or (hard_lo == 0.0 and lo <= 0.0):
            raise InputError("bound", f"{name} = {lo:g}:{hi:g} is not allowed; need low < high within "
                                      f"{'(' if hard_lo == 0.0 else '['}{hard_lo:g}, {hard_hi:g}] (log space for E, A, B)")
        box[key] = (lo, hi)
    return np.array([box[n][0] for n in THETA_NAMES]), np.array([box[n][1] for n in THETA_NAMES])


def law_to_theta(law: Law) -> np.ndarray:
    """Log-space parameter vector of a law (R* = 1 placeholders for a base law)."""
    params = {"rd_star": 1.0, "rn_star": 1.0, **law.params()}
    return np.array([_to_log(name, params[name], "law") for name in PARAM_NAMES])


def theta_to_law(theta: np.ndarray, kind: str) -> Law:
    """The law object of a log-space parameter vector."""
    values = (float(v) for v in theta)
    return law_from_params(kind, {name: math.exp(v) if name in _LOG_OF else v for name, v in zip(PARAM_NAMES, values)})


@dataclass(frozen=True)
class FitSpec:
    """What to fit: law, method, a fixed base (``repetition``), fixed values, tied exponents, bounds."""

    law: str = DataConstrainedLaw.name
    method: str = "two-stage"
    base: BaseLaw | None = None
    fixed: Mapping[str, float] = field(default_factory=dict)
    tie_exponents: bool = False
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    delta: float = HUBER_DELTA

    def __post_init__(self):
        if self.law not in (BaseLaw.name, DataConstrainedLaw.name):
            raise unknown_law(self.law)
        if self.method not in METHODS:
            raise InputError("method", f"{self.method!r} is not a fit method; choose one of {', '.join(METHODS)}")
        if (self.law == BaseLaw.name) != (self.method == "base"):
            raise InputError("method", f"{self.method!r} does not fit the {self.law} law")
        if (self.method == "repetition") != (self.base is not None):
            raise InputError("base", "the repetition-only fit needs a fixed base law (a preset or a law.json), "
                                     "and only it takes one")
        if not self.delta > 0:
            raise InputError("delta", f"{self.delta!r} must be > 0")

    @classmethod
    def resolve(cls, *, law: str = DataConstrainedLaw.name, base: BaseLaw | None = None, method: str | None = None,
                fixed: Mapping[str, float] | None = None, bounds: Mapping[str, tuple[float, float]] | None = None,
                tie_exponents: bool = False) -> FitSpec:
        """The spec of a request; without a `method`: base (the base law), repetition (a fixed base) or two-stage."""
        if method is None:
            method = "base" if law == BaseLaw.name else "repetition" if base is not None else "two-stage"
        return cls(law=law, method=method, base=base, fixed=fixed or {}, tie_exponents=tie_exponents, bounds=bounds or {})

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """The search box (lower, upper) in log space."""
        return resolve_bounds(self.bounds)


@dataclass(frozen=True)
class Stage:
    """One minimisation: which runs, repetition on or off, free parameter groups, fixed values, box, starts."""

    runs: np.ndarray  # bool mask over the table
    repetition: bool
    groups: tuple[tuple[int, ...], ...]  # theta indices moved by each free variable (tied share one)
    theta: np.ndarray  # values of every parameter that is not free
    lower: np.ndarray
    upper: np.ndarray
    grid: Mapping[str, list[float]]
    runs_label: str = "runs"

    @property
    def size(self) -> int:
        return len(self.groups)

    def expand(self, z: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        """Full parameter rows (k, 7) from free rows (k, size); other values from `theta` (k, 7) or the stage."""
        full = np.repeat(self.theta[None, :], z.shape[0], axis=0) if theta is None else theta.copy()
        for col, group in enumerate(self.groups):
            full[:, list(group)] = z[:, col, None]
        return full

    def reduce(self, theta: np.ndarray) -> np.ndarray:
        """Free rows (k, size) of full rows (k, 7)."""
        return theta[:, [group[0] for group in self.groups]]

    def reduce_grad(self, grad: np.ndarray) -> np.ndarray:
        """Gradient with respect to the free variables from the full gradient."""
        return np.stack([grad[:, list(group)].sum(axis=1) for group in self.groups], axis=1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Box bounds of the free variables."""
        first = [group[0] for group in self.groups]
        return self.lower[first], self.upper[first]

    def starts(self) -> np.ndarray:
        """The start grid: full product of each free variable's start values, clipped into the box."""
        values = [self.grid[THETA_NAMES[group[0]]] for group in self.groups]
        lower, upper = self.bounds()
        return np.unique(np.clip(np.array(list(itertools.product(*values)), dtype=float), lower, upper), axis=0)


def _r_star_grid(lower: np.ndarray, upper: np.ndarray, count: int) -> dict[str, list[float]]:
    grid = {}
    for j in R_STARS:
        lo, hi = max(lower[j], 0.1), min(upper[j], 1000.0)
        grid[THETA_NAMES[j]] = np.geomspace(lo, max(hi, lo), count).tolist()
    return grid


def _stage(*, runs: np.ndarray, repetition: bool, candidates: tuple[int, ...], theta: np.ndarray,
           grid: Mapping[str, list[float]], fixed: Mapping[str, float], box: tuple[np.ndarray, np.ndarray],
           tie_exponents: bool, runs_label: str = "runs") -> Stage:
    """A stage moving the `candidates` that are not fixed (alpha and beta as one when tied), from `theta`."""
    theta = theta.copy()
    for name, value in fixed.items():
        theta[THETA_NAMES.index(name)] = value
    groups = [(j,) for j in candidates if THETA_NAMES[j] not in fixed]
    if tie_exponents and ALPHA in candidates:
        if "alpha" in fixed or "beta" in fixed:
            theta[ALPHA] = theta[BETA] = fixed.get("alpha", fixed.get("beta"))
            groups = [g for g in groups if g[0] not in (ALPHA, BETA)]
        else:
            groups = [g for g in groups if g[0] != BETA]
            groups[[g[0] for g in groups].index(ALPHA)] = (ALPHA, BETA)
    lower, upper = box
    return Stage(runs=np.asarray(runs, dtype=bool), repetition=repetition, groups=tuple(groups), theta=theta,
                 lower=lower, upper=upper, grid=grid, runs_label=runs_label)


def plan_stages(table: RunTable, spec: FitSpec) -> list[Stage]:
    """The minimisations a spec needs, in order (two for ``two-stage``, one otherwise)."""
    box = spec.box()
    make = partial(_stage, fixed=fixed_to_theta(spec.fixed, *box), box=box, tie_exponents=spec.tie_exponents)
    everything = np.ones(len(table), dtype=bool)
    placeholders = np.array([PLACEHOLDERS[name] for name in THETA_NAMES])
    r_grid = _r_star_grid(*box, R_STAR_STARTS["repetition"])
    if spec.method == "base":
        stages = [make(runs=everything, repetition=False, candidates=BASE_PARAMS, theta=placeholders, grid=BASE_GRID)]
    elif spec.method == "repetition":
        stages = [make(runs=everything, repetition=True, candidates=R_STARS, theta=law_to_theta(spec.base), grid=r_grid)]
    elif spec.method == "joint":
        grid = {**JOINT_GRID, **_r_star_grid(*box, R_STAR_STARTS["joint"])}
        stages = [make(runs=everything, repetition=True, candidates=EVERY_PARAM, theta=placeholders, grid=grid)]
    else:
        once = table.tokens <= table.unique_tokens
        grid = {**BASE_GRID, "rn_star": r_grid["rn_star"][::5]}
        stages = [make(runs=once, repetition=True, candidates=(*BASE_PARAMS, RN_STAR), theta=placeholders, grid=grid,
                       runs_label="runs that saw their data once (D <= U)"),
                  make(runs=everything, repetition=True, candidates=R_STARS, theta=placeholders, grid=r_grid)]
    hint = "; give a base (--base-preset / --base) or use --joint" if spec.method == "two-stage" else ""
    for stage in stages:
        n_runs = int(stage.runs.sum())
        if n_runs <= stage.size:
            raise InputError("runs", f"{n_runs} {stage.runs_label} for {stage.size} free parameters; "
                                     f"need at least {stage.size + 1}{hint}")
    return stages


def batched_objective(stage: Stage, data: FitData, delta: float, weights=None, theta_rows=None):
    """fun(z, rows) for `batched_lbfgs`: weights (K, n) and fixed values (K, 7) per row when given."""
    def fun(z, rows):
        w = None if weights is None else weights[rows]
        theta = stage.expand(z, None if theta_rows is None else theta_rows[rows])
        f, grad = objective(theta, data, w, repetition=stage.repetition, delta=delta)
        return f, stage.reduce_grad(grad)
    return fun


def _polish(stage: Stage, data: FitData, z0: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    fun = batched_objective(stage, data, delta)
    lower, upper = stage.bounds()

    def single(z):
        f, g = fun(z[None, :], np.zeros(1, dtype=int))
        return float(f[0]), g[0]
    result = minimize(single, z0, jac=True, method="L-BFGS-B", bounds=list(zip(lower, upper)),
                      options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20})
    return result.x, float(result.fun)


def halving_schedule(n_starts: int, first: int = 4) -> dict[int, int]:
    """Keep the best quarter after `first` iterations, then after twice as many more, until FINALISTS remain."""
    schedule, iteration, rounds, keep = {}, 0, first, n_starts
    while keep > FINALISTS:
        keep = max(keep // 4, FINALISTS)
        iteration += rounds
        schedule[iteration] = keep
        rounds *= 2
    return schedule


def minimise_stage(stage: Stage, data: FitData, delta: float) -> tuple[np.ndarray, float, int]:
    """Best free vector, its objective and the number of starts: all starts, halving, polish."""
    if stage.size == 0:
        f = objective(stage.theta[None, :], data, repetition=stage.repetition, delta=delta, with_grad=False)
        return np.zeros(0), float(f[0]), 0
    starts = stage.starts()
    lower, upper = stage.bounds()
    fun = batched_objective(stage, data, delta)
    result = batched_lbfgs(fun, starts, lower, upper, max_iter=1000, halving=halving_schedule(len(starts)))
    finalists = np.flatnonzero(~result.retired)
    best_z, best_f = None, math.inf
    for row in finalists[np.argsort(result.f[finalists])[:POLISHED]]:
        z, f = _polish(stage, data, result.x[row], delta)
        if result.f[row] < f:
            z, f = result.x[row], float(result.f[row])
        if f < best_f:
            best_z, best_f = z, f
    return best_z, best_f, len(starts)


@dataclass(frozen=True)
class FitResult:
    """A fitted law: the law, its log-space vector, the objective (Huber, last stage) and how it was fitted."""

    law: Law
    theta: np.ndarray
    objective: float
    spec: FitSpec
    free: tuple[str, ...]  # log-space names of fitted parameters
    starts: int
    n_runs: int
    at_bounds: tuple[str, ...] = ()

    @property
    def fixed(self) -> tuple[str, ...]:
        """Parameters of the law that were not fitted."""
        return tuple(n for n in param_names(self.spec.law) if theta_name(n) not in self.free)


def _on_bounds(stages: list[Stage], theta: np.ndarray) -> tuple[str, ...]:
    hits = []
    for stage in stages:
        for group in stage.groups:
            j = group[0]
            span = stage.upper[j] - stage.lower[j]
            if min(theta[j] - stage.lower[j], stage.upper[j] - theta[j]) <= 1e-6 * span:
                hits.extend(PARAM_NAMES[k] for k in group)
    return tuple(dict.fromkeys(hits))  # a parameter free in two stages is named once


def fit(table: RunTable, spec: FitSpec = FitSpec()) -> FitResult:
    """Fit `spec` to the runs of `table`; returns the best law over the whole start grid."""
    stages = plan_stages(table, spec)
    theta, starts, f = None, 0, math.nan
    for i, stage in enumerate(stages):
        if theta is not None:  # a later stage builds on the base law fitted before it
            carried = stage.theta.copy()
            carried[BASE] = theta[BASE]
            stages[i] = stage = replace(stage, theta=carried)
        data = FitData.from_table(table.subset(stage.runs))
        z, f, n_starts = minimise_stage(stage, data, spec.delta)
        theta = stage.expand(z[None, :])[0]
        starts += n_starts
    free = tuple(THETA_NAMES[j] for stage in stages for group in stage.groups for j in group)
    return FitResult(theta_to_law(theta, spec.law), theta, f, spec, free, starts, len(table),
                     _on_bounds(stages, theta))
