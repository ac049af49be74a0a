"""How well a law describes runs: Huber objective, R^2 and RMSE (log-loss and loss), residuals,
and a leave-out extrapolation check (fit below a compute threshold, score the runs above it)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scaling.errors import InputError
from scaling.fit import FitSpec, fit
from scaling.laws import Law
from scaling.objective import huber
from scaling.runs import RunTable

EXTRAPOLATION_QUANTILE = 0.75  # default threshold: runs above this compute quantile are held out


def _r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((observed - observed.mean()) ** 2).sum())
    return 1.0 - float(((observed - predicted) ** 2).sum()) / total if total > 0 else float("nan")


def _rmse(observed: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((observed - predicted) ** 2)))


def residual_table(law: Law, table: RunTable) -> list[dict]:
    """One row per run: name, N, D, U, epochs, observed and predicted loss, residuals."""
    predicted = law.predict(table.params, table.tokens, table.unique_tokens)
    return [
        {"run": name, "params": float(n), "tokens": float(d), "unique_tokens": float(u), "epochs": float(d / u),
         "loss": float(obs), "predicted": float(pred), "residual": float(obs - pred),
         "log_residual": float(np.log(obs) - np.log(pred))}
        for name, n, d, u, obs, pred in zip(table.names, table.params, table.tokens, table.unique_tokens,
                                            table.loss, predicted)
    ]


def goodness_of_fit(law: Law, table: RunTable, delta: float) -> dict[str, float]:
    """Huber objective (log space, as fitted), R^2 and RMSE of log-loss and of loss."""
    return prediction_quality(table.loss, law.predict(table.params, table.tokens, table.unique_tokens), delta)


def prediction_quality(observed: np.ndarray, predicted: np.ndarray, delta: float) -> dict[str, float]:
    """Huber objective of log-loss residuals, R^2 and RMSE of log-loss and of loss, for any law's predictions."""
    predicted = np.asarray(predicted, dtype=float)
    log_obs, log_pred = np.log(observed), np.log(predicted)
    value, _ = huber(log_pred - log_obs, delta)
    return {
        "huber": float(value.sum()),
        "r2_log_loss": _r2(log_obs, log_pred), "rmse_log_loss": _rmse(log_obs, log_pred),
        "r2_loss": _r2(observed, predicted), "rmse_loss": _rmse(observed, predicted),
    }


def describe_pool_fit(observed: np.ndarray, predicted: np.ndarray, names, delta: float) -> dict:
    """Diagnostics of a pool law: goodness of fit and one residual row per run (its leave-out check:
    `scaling.pool_fit.pool_extrapolation_check`)."""
    rows = [{"run": name, "loss": float(obs), "predicted": float(pred), "residual": float(obs - pred),
             "log_residual": float(np.log(obs) - np.log(pred))} for name, obs, pred in zip(names, observed, predicted)]
    return {**prediction_quality(observed, predicted, delta), "residuals": rows}


def leave_out_check(table: RunTable, threshold: float | None,
                    fit_and_predict: Callable[[RunTable, RunTable], tuple[np.ndarray, dict]]) -> dict:
    """Fit on the runs with C = 6ND <= threshold and score the loss error on the runs above it;
    `fit_and_predict(train, test)` gives the test runs' predicted loss and the law fitted on train.

    The default threshold is the 75th percentile of C; when the runs of the largest C reach down to it (a
    study of few compute levels), the next smaller C, so that the runs of the largest C are held out."""
    flops = table.flops
    if threshold is None:
        threshold = float(np.quantile(flops, EXTRAPOLATION_QUANTILE))
        below_top = flops[flops < flops.max()]
        if threshold >= flops.max() and below_top.size:
            threshold = float(below_top.max())
    below = flops <= threshold
    if below.all() or not below.any():
        raise InputError("extrapolation threshold", f"{threshold:g} FLOPs leaves no runs on one side "
                                                   f"(runs span {flops.min():g} to {flops.max():g})")
    train, test = table.subset(below), table.subset(~below)
    predicted, params = fit_and_predict(train, test)
    error = test.loss - predicted
    return {
        "threshold_flops": float(threshold), "n_fit": len(train), "n_held_out": len(test),
        "rmse_loss": _rmse(test.loss, predicted), "mean_abs_error": float(np.abs(error).mean()),
        "max_abs_error": float(np.abs(error).max()), "mean_error": float(error.mean()),
        "mean_abs_relative_error": float(np.abs(error / test.loss).mean()),
        "params": params,
    }


def extrapolation_check(table: RunTable, spec: FitSpec, threshold: float | None = None) -> dict:
    """The leave-out check of a one-pool law: fit `spec` on runs with C = 6ND <= threshold, score the runs above it."""

    def fit_and_predict(train: RunTable, test: RunTable) -> tuple[np.ndarray, dict]:
        law = fit(train, spec).law
        return law.predict(test.params, test.tokens, test.unique_tokens), law.params()

    return leave_out_check(table, threshold, fit_and_predict)


def skipped_when_impossible(check: Callable[[], dict]) -> dict:
    """The check's result, or `{"skipped": why}` when the runs allow no leave-out split (an InputError)."""
    try:
        return check()
    except InputError as err:
        return {"skipped": str(err)}


def describe_fit(law: Law, table: RunTable, spec: FitSpec, threshold: float | None = None,
                 extrapolate: bool = True) -> dict:
    """All diagnostics of a fitted law: goodness of fit, residuals and (if possible) the extrapolation check."""
    out = {**goodness_of_fit(law, table, spec.delta), "residuals": residual_table(law, table)}
    if extrapolate:  # a threshold the user gave that splits nothing is an error; the default one is skipped
        out["extrapolation"] = (extrapolation_check(table, spec, threshold) if threshold is not None
                                else skipped_when_impossible(lambda: extrapolation_check(table, spec)))
    return out
