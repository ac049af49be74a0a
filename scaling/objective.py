"""The fitting objective, batched: many parameter vectors (starts, bootstrap resamples) at once.

Parameters live in log space, theta = (e, a, b, alpha, beta, rd_star, rn_star) with A = e^a,
B = e^b, E = e^e. For each run the law's log-loss is

    f = LSE(a - alpha log N', b - beta log D', e)

and the objective is sum_i w_i Huber_delta(f_i - log L_i) (delta = 1e-3 by default), returned with
its analytic gradient. `theta` has shape (K, 7); weights are (n,) or (K, n) (bootstrap counts).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scaling.runs import RunTable

THETA_NAMES = ("e", "a", "b", "alpha", "beta", "rd_star", "rn_star")
LOG_E, LOG_A, LOG_B, ALPHA, BETA, RD_STAR, RN_STAR = range(len(THETA_NAMES))  # positions in theta
BASE = slice(LOG_E, BETA + 1)  # the base law's five parameters
R_STARS = (RD_STAR, RN_STAR)
LOGGED = (LOG_E, LOG_A, LOG_B)  # held as logs: E = e^e, A = e^a, B = e^b
_N_OPT_PARAMS = (LOG_A, LOG_B, ALPHA, BETA)  # what N_opt(U_D), hence N', depends on besides R_N*
HUBER_DELTA = 1e-3


class FitData(NamedTuple):
    """Per-run arrays the objective needs, precomputed once per table."""

    log_n: np.ndarray
    log_d: np.ndarray
    log_u: np.ndarray  # log of the unique tokens seen, min(U, D)
    repeats: np.ndarray  # R_D = D / U_D - 1
    log_loss: np.ndarray

    @classmethod
    def from_table(cls, table: RunTable) -> "FitData":
        """Precompute logs and repetition counts of a run table."""
        unique_seen = np.minimum(table.unique_tokens, table.tokens)
        return cls(
            np.log(table.params), np.log(table.tokens), np.log(unique_seen),
            table.tokens / unique_seen - 1.0, np.log(table.loss),
        )


def huber(residual: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative (torch's convention: 0.5 r^2 inside delta, delta (|r| - delta/2) outside)."""
    magnitude = np.abs(residual)
    value = np.where(magnitude <= delta, 0.5 * residual**2, delta * (magnitude - 0.5 * delta))
    return value, np.clip(residual, -delta, delta)


def _saturation_terms(repeats: np.ndarray, r_star: np.ndarray):
    """log(1 + R* (1 - e^{-R/R*})) and its derivatives in R and R*."""
    decay = np.exp(-repeats / r_star)
    worth = 1.0 + r_star * (1.0 - decay)
    d_repeats = decay / worth
    d_r_star = ((1.0 - decay) - decay * repeats / r_star) / worth
    return np.log(worth), d_repeats, d_r_star


def log_effective(theta: np.ndarray, data: FitData):
    """log N', log D' per (parameter vector, run), with what the gradient needs.

    Returns log_n_eff, log_d_eff, d log N'/d(a, b, alpha, beta) (stacked), d log N'/d rn*, d log D'/d rd*.
    """
    a, b, alpha, beta, rd, rn = (theta[:, j, None] for j in (*_N_OPT_PARAMS, *R_STARS))
    log_d_eff_worth, _, d_logd_rd = _saturation_terms(data.repeats, rd)
    log_d_eff = data.log_u + log_d_eff_worth

    # log N_opt(U_D) = (log alpha - log beta + a - b + beta log U_D) / alpha
    log_n_opt = (np.log(alpha) - np.log(beta) + a - b + beta * data.log_u) / alpha
    excess = data.log_n > log_n_opt
    log_usable = np.where(excess, log_n_opt, data.log_n)
    excess_ratio = np.expm1(np.minimum(data.log_n - log_usable, 600.0))  # R_N >= 0, zero without excess
    log_n_worth, d_worth_repeats, d_logn_rn = _saturation_terms(excess_ratio, rn)
    log_n_eff = log_usable + log_n_worth
    # d log N' / d log N_opt: 1 through U_N, minus (R_N + 1) through R_N; zero without excess
    d_logn_dq = np.where(excess, 1.0 - d_worth_repeats * (excess_ratio + 1.0), 0.0)
    d_logn_rn = np.where(excess, d_logn_rn, 0.0)
    d_q = (1.0 / alpha, -1.0 / alpha, 1.0 / alpha**2 - log_n_opt / alpha, (data.log_u - 1.0 / beta) / alpha)
    d_logn_base = np.stack([d_logn_dq * dq for dq in np.broadcast_arrays(*d_q)])
    return log_n_eff, log_d_eff, d_logn_base, d_logn_rn, d_logd_rd


def objective(
    theta: np.ndarray,
    data: FitData,
    weights: np.ndarray | None = None,
    *,
    repetition: bool = True,
    delta: float = HUBER_DELTA,
    with_grad: bool = True,
):
    """Weighted Huber objective (K,) and gradient (K, 7) for K parameter vectors theta (K, 7).

    With `repetition=False` the base law is fitted (N' = N, D' = D; rd*, rn* get zero gradient).
    """
    theta = np.atleast_2d(theta)
    e, a, b, alpha, beta = (theta[:, j, None] for j in (LOG_E, LOG_A, LOG_B, ALPHA, BETA))
    if repetition:
        log_n_eff, log_d_eff, d_logn_base, d_logn_rn, d_logd_rd = log_effective(theta, data)
    else:
        log_n_eff, log_d_eff = data.log_n[None, :], data.log_d[None, :]
    # The box bounds of `scaling.fit` (e >= -20, a, b <= 60, exponents >= 0) keep the three terms
    # finite and their sum positive, so LSE needs no max-shift here.
    term_n = np.exp(a - alpha * log_n_eff)
    term_d = np.exp(b - beta * log_d_eff)
    total = term_n + term_d + np.exp(e)
    value, slope = huber(np.log(total) - data.log_loss, delta)
    w = 1.0 if weights is None else weights
    f = (w * value).sum(axis=-1)
    if not with_grad:
        return f
    share_n, share_d = term_n / total, term_d / total  # softmax weights of the terms
    share_e = 1.0 - share_n - share_d
    g = w * slope
    grad = np.zeros_like(theta)
    grad[:, LOG_E] = (g * share_e).sum(axis=-1)
    grad[:, LOG_A] = (g * share_n).sum(axis=-1)
    grad[:, LOG_B] = (g * share_d).sum(axis=-1)
    grad[:, ALPHA] = -(g * share_n * log_n_eff).sum(axis=-1)
    grad[:, BETA] = -(g * share_d * log_d_eff).sum(axis=-1)
    if repetition:
        through_n = g * share_n * -alpha  # d f / d log N'
        for j, d in zip(_N_OPT_PARAMS, d_logn_base):
            grad[:, j] += (through_n * d).sum(axis=-1)
        grad[:, RD_STAR] = (g * share_d * -beta * d_logd_rd).sum(axis=-1)
        grad[:, RN_STAR] = (through_n * d_logn_rn).sum(axis=-1)
    return f, grad
