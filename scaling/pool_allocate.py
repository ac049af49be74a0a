"""Compute allocation across data pools: N and each pool's D_i minimising a pool law at C = 6 N sum D_i.

The variables of one query are x = log N - log sqrt(C/6) in [-SPAN, SPAN] and, by stick-breaking,
s_2, ..., s_P in [0, 1]: pool i > 1 gets the share s_i prod_{1<j<i} (1 - s_j) of D, the reference pool
the rest. That box maps onto every split of D exactly (a pool can get nothing), so a bounded L-BFGS
(`scaling.optimize.batched_lbfgs`) from a small grid of starts per query finds the optimum; all
queries and starts advance together. `pays_from` answers the quality-quantity question: the least
compute at which a non-reference pool gets a share of the optimal D (a scan, then bisection).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from scaling.optimize import batched_lbfgs, central_differences
from scaling.pool_laws import PoolLaw, predict_pools

SPAN = 14.0  # log N within +-SPAN of log sqrt(C/6), as in `scaling.allocate`
X_STARTS = (-6.0, -3.0, 0.0, 3.0)
SHARE_STARTS = (0.0, 0.5, 1.0)
PAYS_SHARE = 1e-3  # a pool "pays" once it carries at least this share of the optimal D
SCAN_POINTS = 48
BISECTIONS = 40


class PoolAllocation(NamedTuple):
    """Optimal N (C,), per-pool tokens and epochs (C, P), total tokens and loss (C,)."""

    params: np.ndarray
    pool_tokens: np.ndarray
    epochs: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray


def stick_shares(s: np.ndarray) -> np.ndarray:
    """Pool shares (..., P) from stick-breaking fractions s (..., P-1) in [0, 1]; the reference pool first."""
    s = np.clip(s, 0.0, 1.0)
    left = np.cumprod(1.0 - s, axis=-1)
    before = np.concatenate([np.ones(s.shape[:-1] + (1,)), left[..., :-1]], axis=-1)
    return np.concatenate([np.prod(1.0 - s, axis=-1, keepdims=True), s * before], axis=-1)


def _split(z: np.ndarray, log_c6: np.ndarray):
    """N (k,) and per-pool tokens (k, P) of free rows z (k, P) at log(C/6) (k,)."""
    x = np.clip(z[:, 0], -SPAN, SPAN)
    log_n = 0.5 * log_c6 + x
    tokens = np.exp(log_c6 - log_n)[:, None] * stick_shares(z[:, 1:])
    return np.exp(log_n), tokens


def allocate_pools(law: PoolLaw, flops, unique_tokens, samples: dict[str, np.ndarray] | None = None) -> PoolAllocation:
    """The loss-minimising N and D_i for each compute budget in `flops` (C,) with pools of `unique_tokens` (P,).

    With `samples` (parameter name -> (K,) values, e.g. bootstrap samples; other parameters from
    `law`) every sample is allocated too, all in the same batched call: arrays (K, C) and (K, C, P).
    """
    flops = np.atleast_1d(np.asarray(flops, dtype=float))
    unique = np.asarray(unique_tokens, dtype=float)
    cls, fixed = type(law), law.params()
    n_samples = 1 if samples is None else len(next(iter(samples.values())))
    starts = np.array(list(itertools.product(X_STARTS, *[SHARE_STARTS] * (len(law.pools) - 1))))
    n_starts, n_queries = len(starts), n_samples * len(flops)
    log_c6 = np.repeat(np.tile(np.log(flops / 6.0), n_samples), n_starts)  # per row: sample-major, then budget
    sample_of_row = np.repeat(np.arange(n_samples), len(flops) * n_starts)

    def values(z, rows):
        n, tokens = _split(z, log_c6[rows])
        p = fixed if samples is None else {**fixed, **{k: v[sample_of_row[rows]] for k, v in samples.items()}}
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss = predict_pools(cls, p, law.pools, n, tokens, unique)
        return np.where(np.isfinite(loss), loss, np.inf)

    lower = np.array([-SPAN, *[0.0] * (len(law.pools) - 1)])
    upper = np.array([SPAN, *[1.0] * (len(law.pools) - 1)])
    result = batched_lbfgs(central_differences(values), np.tile(starts, (n_queries, 1)), lower, upper,
                           max_iter=500, ftol=1e-15, gtol=1e-12)
    best = result.f.reshape(n_queries, n_starts).argmin(axis=1) + np.arange(n_queries) * n_starts
    n, tokens = _split(result.x[best], log_c6[best])
    found = PoolAllocation(n, tokens, tokens / unique, tokens.sum(axis=1), result.f[best])
    if samples is None:
        return found
    return PoolAllocation(*(a.reshape((n_samples, len(flops)) + a.shape[1:]) for a in found))


def pool_allocation_records(law: PoolLaw, flops: np.ndarray, unique: np.ndarray,
                            samples: dict[str, np.ndarray] | None = None) -> list[dict]:
    """The optimal allocation per compute budget as records (flops, params, tokens, loss, and per pool its
    unique_tokens, tokens, epochs), with 95% bootstrap intervals under `intervals` when `samples` are given."""
    from scaling.bootstrap import percentile_interval

    best = allocate_pools(law, flops, unique)
    records = [{"flops": float(c), "params": float(best.params[i]), "tokens": float(best.tokens[i]),
                "loss": float(best.loss[i]),
                "pools": {pool: {"unique_tokens": float(unique[j]), "tokens": float(best.pool_tokens[i, j]),
                                 "epochs": float(best.epochs[i, j])} for j, pool in enumerate(law.pools)}}
               for i, c in enumerate(flops)]
    if samples is None:
        return records
    spread = allocate_pools(law, flops, unique, samples)

    def bounds(values):
        return percentile_interval(values).T.tolist()  # one [low, high] per budget
    params, loss = bounds(spread.params), bounds(spread.loss)
    tokens = [bounds(spread.pool_tokens[..., j]) for j in range(len(law.pools))]
    epochs = [bounds(spread.epochs[..., j]) for j in range(len(law.pools))]
    for i, record in enumerate(records):
        record["intervals"] = {"params": params[i], "loss": loss[i],
                               "pools": {pool: {"tokens": tokens[j][i], "epochs": epochs[j][i]}
                                         for j, pool in enumerate(law.pools)}}
    return records


def pays_from(law: PoolLaw, unique_tokens) -> dict[str, float]:
    """For each non-reference pool, the least compute C at which it carries >= PAYS_SHARE of the optimal D.

    Scans C over the range where the base law's optimal D runs from 1e-3 to 1e4 times all unique
    tokens, then bisects log C; a pool that never pays in that range gets inf, one that always pays
    the range's lower end.
    """
    unique = np.asarray(unique_tokens, dtype=float)
    if len(law.pools) == 1:
        return {}
    base = law.base
    g = (base.alpha * base.A / (base.beta * base.B)) ** (1.0 / (base.alpha + base.beta))
    exponent = (base.alpha + base.beta) / base.alpha
    lo, hi = (np.log(6.0) + exponent * np.log(scale * unique.sum() * g) for scale in (1e-3, 1e4))
    scan = np.linspace(lo, hi, SCAN_POINTS)
    shares = allocate_pools(law, np.exp(scan), unique).pool_tokens
    shares = shares / shares.sum(axis=1, keepdims=True)
    pays = shares[:, 1:] >= PAYS_SHARE  # (scan, pools after the reference)
    first = np.where(pays.any(axis=0), pays.argmax(axis=0), SCAN_POINTS)
    left, right = scan[np.maximum(first - 1, 0)], scan[np.minimum(first, SCAN_POINTS - 1)]
    pools = np.arange(1, len(law.pools))
    for _ in range(BISECTIONS):  # every pool's bisection in one allocation call
        mid = 0.5 * (left + right)
        at = allocate_pools(law, np.exp(mid), unique).pool_tokens
        enough = at[pools - 1, pools] >= PAYS_SHARE * at.sum(axis=1)
        left, right = np.where(enough, left, mid), np.where(enough, mid, right)
    answer = np.where(first == 0, np.exp(lo), np.where(first == SCAN_POINTS, np.inf, np.exp(right)))
    return {pool: float(c) for pool, c in zip(law.pools[1:], answer)}
