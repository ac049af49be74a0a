"""`law.json`: a fitted law with everything needed to trust and reuse it.

Holds the law name, all parameters (linear, plus log E, A, B), which were fixed or tied, the
search box and any parameter that ended on it, the objective, bootstrap intervals and samples,
diagnostics, the number of runs and a hash of the input table. No timestamps: the same fit of the
same table gives the same bytes. `fit_law_document` is the one way from a run table to that content
(fit, bootstrap, diagnostics), for `dcsl fit` and the sweep's fit stage alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scaling import dcsl_version
from scaling.bootstrap import CONFIDENCE, bootstrap, parameter_intervals, percentile_interval
from scaling.diagnostics import describe_fit, describe_pool_fit, skipped_when_impossible
from scaling.errors import InputError
from scaling.extrapolation import fitted_range
from scaling.fit import FitResult, FitSpec, fit
from scaling.laws import BASE_PARAM_NAMES, Law, law_from_params, param_names
from scaling.objective import LOGGED, R_STARS, THETA_NAMES
from scaling.pool_fit import PoolFitResult, PoolFitSpec, bootstrap_pools, fit_pools, pool_extrapolation_check, pool_predictions
from scaling.pool_laws import POOL_LAWS, PoolLaw, pool_law_from_params
from scaling.runs import RunTable

SCHEMA = "dcsl.law/1"


def fit_law_document(table: RunTable, spec: FitSpec, *, resamples: int = 0, seed: int = 0,
                     extrapolate_above: float | None = None, base_source: str | None = None,
                     on_stage: Callable[[str], None] | None = None) -> tuple[FitResult, dict]:
    """Fit `spec` to `table`, bootstrap it (`resamples`, `seed`) and diagnose it: the result and its law.json content.

    `on_stage(text)` hears of each step as it starts (fitting, bootstrap, diagnostics).
    """
    report = on_stage or (lambda text: None)
    result, samples = _fit_and_resample(fit, bootstrap, table, spec, resamples, seed, report)
    report("diagnostics: extrapolation check")
    diagnostics = describe_fit(result.law, table, spec, extrapolate_above)
    return result, law_document(result, table, base_source=base_source, samples=samples, seed=seed,
                                diagnostics=diagnostics)


def _fit_and_resample(fit_fn, bootstrap_fn, table: RunTable, spec, resamples: int, seed: int,
                      report: Callable[[str], None]):
    """`fit_fn(table, spec)` and, when `resamples`, its bootstrap samples (None otherwise), announcing each step."""
    report("fitting")
    result = fit_fn(table, spec)
    if not resamples:
        return result, None
    report(f"bootstrap: {resamples} resamples")
    return result, bootstrap_fn(table, result, resamples, seed)


def law_document(result: FitResult, table: RunTable, *, base_source: str | None = None,
                 samples: np.ndarray | None = None, seed: int = 0, diagnostics: dict | None = None) -> dict:
    """The JSON-ready content of law.json for a fit of `table`; bootstrap `samples` (drawn with `seed`) give intervals."""
    kind = result.spec.law
    names = param_names(kind)
    lower, upper = result.spec.box()
    bounds = {}
    for j, name in enumerate(names):
        lo, hi = float(lower[j]), float(upper[j])
        bounds[name] = [math.exp(lo), math.exp(hi)] if j in LOGGED else [lo, hi]
    n_theta = len(names)
    doc = {
        "schema": SCHEMA,
        "law": kind,
        "params": result.law.params(),
        "log_params": {THETA_NAMES[j]: float(result.theta[j]) for j in LOGGED},
        "method": result.spec.method,
        "base_source": base_source,
        "fixed": list(result.fixed),
        "tied": ["alpha", "beta"] if result.spec.tie_exponents else [],
        "bounds": bounds,
        "at_bounds": list(result.at_bounds),
        "objective": {"huber": result.objective, "delta": result.spec.delta, "starts": result.starts},
        "intervals": None if samples is None else {"confidence": CONFIDENCE,
                                                   "params": parameter_intervals(samples, kind)},
        "bootstrap": None if samples is None else {
            "resamples": int(samples.shape[0]), "seed": seed, "columns": list(THETA_NAMES[:n_theta]),
            "samples": samples[:, :n_theta].tolist(),
        },
        "diagnostics": diagnostics,
        **_provenance(table),
    }
    return doc


def _provenance(table: RunTable) -> dict:
    """The fields every law.json ends with: its runs' count and range, the input's hash, the version."""
    return {"n_runs": len(table), "fitted_range": fitted_range(table.params, table.tokens),
            "input": {"source": table.source, "sha256": table.sha256()}, "dcsl_version": dcsl_version()}


def fit_pool_law_document(table: RunTable, spec: PoolFitSpec, *, resamples: int = 0, seed: int = 0,
                          base_source: str | None = None,
                          on_stage: Callable[[str], None] | None = None) -> tuple[PoolFitResult, dict]:
    """Fit a pool law (`multi-pool`, `qqt`) to `table`, bootstrap and diagnose it: the result and its law.json content."""
    report = on_stage or (lambda text: None)
    result, samples = _fit_and_resample(fit_pools, bootstrap_pools, table, spec, resamples, seed, report)
    report("diagnostics: extrapolation check")
    extrapolation = skipped_when_impossible(lambda: pool_extrapolation_check(table, spec))
    problem = result.problem
    intervals = None
    if samples is not None:
        linear = problem.params(samples)  # (K, 1) per name
        bounds = percentile_interval(np.column_stack([linear[name][:, 0] for name in problem.free]))
        intervals = {"confidence": CONFIDENCE, "params": {name: [float(bounds[0, j]), float(bounds[1, j])]
                                                          for j, name in enumerate(problem.free)}}
    doc = {
        "schema": SCHEMA,
        "law": spec.law,
        "pools": list(table.pools),
        "params": result.law.params(),
        "method": spec.method,
        "base_source": base_source,
        "fixed": [name for name in result.law.param_names() if name not in problem.free],
        "tied": [],
        "bounds": {name: [math.exp(lo), math.exp(hi)] if name in problem.logged else [lo, hi]
                   for name, lo, hi in zip(problem.free, problem.lower.tolist(), problem.upper.tolist())},
        "at_bounds": list(result.at_bounds),
        "objective": {"huber": result.objective, "delta": spec.delta, "starts": result.starts},
        "intervals": intervals,
        "bootstrap": None if samples is None else {
            "resamples": int(samples.shape[0]), "seed": seed, "columns": problem.theta_names(),
            "samples": samples.tolist()},
        "diagnostics": {**describe_pool_fit(table.loss, pool_predictions(result.law, table), table.names, spec.delta),
                        "extrapolation": extrapolation},
        **_provenance(table),
    }
    return result, doc


def dumps(document: dict) -> str:
    """The canonical text of a law document (what `--json` prints and law.json holds)."""
    return json.dumps(document, indent=2, allow_nan=True) + "\n"


def read_law(path: str | Path) -> tuple[Law | PoolLaw, dict]:
    """Load a law.json: the law object and the whole document; InputError naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError("law file", f"{str(path)!r} does not exist")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError("law file", f"{path} is not valid JSON ({err})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise InputError("law file", f"{path} is not a dcsl law (expected \"schema\": \"{SCHEMA}\")")
    params = document.get("params")
    kind = document.get("law")
    if not isinstance(params, dict):
        raise InputError("law file", f"{path} has no \"params\" object")
    if kind in POOL_LAWS:
        pools = document.get("pools")
        if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
            raise InputError("law file", f"{path}: a {kind} law needs a \"pools\" list of names")
        try:
            return pool_law_from_params(kind, pools, params), document
        except InputError as err:
            raise InputError("law file", f"{path}: {err}") from None
    for name in param_names(kind):
        value = params.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise InputError("law file", f"{path}: params.{name} = {value!r} must be a positive number")
    return law_from_params(kind, params), document


def pool_bootstrap_samples(document: dict) -> dict[str, np.ndarray] | None:
    """The bootstrap samples of a pool law's document as linear parameter arrays (K,) by name, if any."""
    block = document.get("bootstrap")
    if not block:
        return None
    samples = np.asarray(block["samples"], dtype=float)
    out = {}
    for j, column in enumerate(block["columns"]):
        logged = column.startswith("log_")
        out[column[4:] if logged else column] = np.exp(samples[:, j]) if logged else samples[:, j]
    return out


def bootstrap_samples(document: dict) -> np.ndarray | None:
    """The (K, 7) log-space bootstrap samples of a law document (R* = inf columns for a base law), if any."""
    block = document.get("bootstrap")
    if not block:
        return None
    samples = np.asarray(block["samples"], dtype=float)
    if samples.shape[1] == len(BASE_PARAM_NAMES):
        samples = np.column_stack([samples, np.full((len(samples), len(R_STARS)), np.inf)])
    return samples
