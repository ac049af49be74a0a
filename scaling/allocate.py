"""Compute allocation under a unique-data budget: the N, D = C / 6N that minimise the law.

For fixed C and U the loss is a function of x = log N with kinks where D = U (repetition starts),
where N = N_opt(U) (excess parameters start, D >= U) and where N = N_opt(C) (D < U). Between kinks
it is smooth: each piece gets a coarse bracketing grid and a golden-section search to ~1e-12 in
log N, and the best piece wins. Everything is vectorised over queries and over parameter sets
(bootstrap samples), which broadcast against each other.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from scaling.errors import InputError
from scaling.laws import PARAM_NAMES, BaseLaw, Law, optimal_params_for_data, optimality_ratio, predict_loss
from scaling.objective import LOGGED

SPAN = 14.0  # search log N within +-SPAN of log sqrt(C/6): N/D between e^-28 and e^28
GRID = 16  # bracketing points per piece
GOLDEN_STEPS = 60  # each shrinks the bracket by 0.618: 60 steps take it below 1e-12 of its width
INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
MAX_FLOPS = 1e40


class Allocation(NamedTuple):
    """Optimal model size, tokens, epochs (D / U) and predicted loss; arrays of the query shape."""

    params: np.ndarray
    tokens: np.ndarray
    epochs: np.ndarray
    loss: np.ndarray


def samples_arrays(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Bootstrap samples in log space (K, 7) as parameter arrays of shape (K, 1) for broadcasting."""
    columns = [np.exp(column) if j in LOGGED else column for j, column in enumerate(samples.T)]
    return {name: col[:, None] for name, col in zip(PARAM_NAMES, columns)}


def _loss_at(log_n, log_c6, unique, p):
    return predict_loss(np.exp(log_n), np.exp(log_c6 - log_n), unique, **p)


def _golden(lo, hi, log_c6, unique, p):
    c, d = hi - INV_PHI * (hi - lo), lo + INV_PHI * (hi - lo)
    fc, fd = _loss_at(c, log_c6, unique, p), _loss_at(d, log_c6, unique, p)
    for _ in range(GOLDEN_STEPS):
        left = fc < fd  # minimum in [lo, d]
        hi = np.where(left, d, hi)
        lo = np.where(left, lo, c)
        keep_x, keep_f = np.where(left, c, d), np.where(left, fc, fd)
        new_x = np.where(left, hi - INV_PHI * (hi - lo), lo + INV_PHI * (hi - lo))
        new_f = _loss_at(new_x, log_c6, unique, p)
        c, fc = np.where(left, new_x, keep_x), np.where(left, new_f, keep_f)
        d, fd = np.where(left, keep_x, new_x), np.where(left, keep_f, new_f)
    return np.where(fc < fd, c, d), np.minimum(fc, fd)


def optimal_allocation(params: dict, flops, unique_tokens) -> Allocation:
    """N, D, epochs and loss minimising the law at compute C = 6ND and U unique tokens (all broadcast)."""
    flops = np.asarray(flops, dtype=float)
    unique = np.asarray(unique_tokens, dtype=float)
    shape = np.broadcast_shapes(flops.shape, unique.shape, *(np.shape(v) for v in params.values()))
    log_c6 = np.broadcast_to(np.log(flops / 6.0), shape)
    unique = np.broadcast_to(unique, shape)
    p = {k: np.broadcast_to(np.asarray(v, dtype=float), shape) for k, v in params.items()}
    centre = 0.5 * log_c6
    lo_edge = np.maximum(centre - SPAN, 0.0)  # N >= 1
    hi_edge = np.minimum(centre + SPAN, log_c6)  # D >= 1
    with np.errstate(divide="ignore", over="ignore"):
        kinks = np.stack([
            log_c6 - np.log(unique),  # D = U
            np.log(optimal_params_for_data(unique, p["A"], p["B"], p["alpha"], p["beta"])),
            np.log(optimality_ratio(p["A"], p["B"], p["alpha"], p["beta"])) + log_c6 * p["beta"] / (p["alpha"] + p["beta"]),
        ], axis=-1)
    edges = np.sort(np.concatenate([lo_edge[..., None], np.clip(kinks, lo_edge[..., None], hi_edge[..., None]),
                                    hi_edge[..., None]], axis=-1), axis=-1)
    left, right = edges[..., :-1], edges[..., 1:]  # (..., pieces)
    expand = (lambda a: a[..., None, None])
    grid = left[..., None] + (right - left)[..., None] * np.linspace(0.0, 1.0, GRID)  # (..., pieces, GRID)
    pg = {k: expand(v) for k, v in p.items()}
    grid_loss = _loss_at(grid, expand(log_c6), expand(unique), pg)
    j = np.argmin(grid_loss, axis=-1)[..., None]
    step = ((right - left) / (GRID - 1))[..., None]
    best_grid_x = np.take_along_axis(grid, j, axis=-1)
    lo = np.maximum(best_grid_x - step, left[..., None])[..., 0]
    hi = np.minimum(best_grid_x + step, right[..., None])[..., 0]
    pp = {k: v[..., None] for k, v in p.items()}
    x, f = _golden(lo, hi, log_c6[..., None], unique[..., None], pp)
    grid_best = np.take_along_axis(grid_loss, j, axis=-1)[..., 0]
    x = np.where(grid_best < f, best_grid_x[..., 0], x)
    f = np.minimum(grid_best, f)
    piece = np.argmin(f, axis=-1)[..., None]
    log_n = np.take_along_axis(x, piece, axis=-1)[..., 0]
    n = np.exp(log_n)
    d = np.exp(log_c6 - log_n)
    return Allocation(n, d, d / unique, np.take_along_axis(f, piece, axis=-1)[..., 0])


def allocation_records(params: dict, flops: np.ndarray, unique: float, samples: np.ndarray | None) -> list[dict]:
    """The optimal allocation per compute budget as records (flops, unique_tokens, params, tokens, epochs, loss),
    with 95% bootstrap intervals of params, tokens, epochs and loss under `intervals` when `samples` are given."""
    from scaling.bootstrap import percentile_interval

    best = optimal_allocation(params, flops, unique)
    records = [{"flops": float(c), "unique_tokens": unique, "params": float(n), "tokens": float(d),
                "epochs": float(e), "loss": float(l)}
               for c, n, d, e, l in zip(flops, best.params, best.tokens, best.epochs, best.loss)]
    if samples is not None:
        spread = optimal_allocation(samples_arrays(samples), flops[None, :], unique)
        for key in ("params", "tokens", "epochs", "loss"):
            lo, hi = percentile_interval(getattr(spread, key))
            for record, a, b in zip(records, lo, hi):
                record.setdefault("intervals", {})[key] = [float(a), float(b)]
    return records


def allocate(law: Law, flops, unique_tokens) -> Allocation:
    """The loss-minimising allocation of compute `flops` under `unique_tokens` for one law."""
    return optimal_allocation(law.full_params(), flops, unique_tokens)


def repetition_blind_allocation(law: Law, flops, unique_tokens) -> dict[str, np.ndarray]:
    """The base law's closed-form optimum, and the loss the full law predicts for it under U.

    `loss` is what following repetition-blind advice gets with only U unique tokens;
    `loss_if_unlimited` is what the base law promises (as if all tokens were fresh).
    """
    base: BaseLaw = law.base
    n, d = base.compute_optimal(flops)
    unique = np.asarray(unique_tokens, dtype=float)
    return {"params": n, "tokens": d, "epochs": d / unique, "loss": law.predict(n, d, unique),
            "loss_if_unlimited": base.predict(n, d)}


def saturation_epochs(law: Law, params, unique_tokens, tolerance: float = 1e-3) -> dict[str, np.ndarray]:
    """Epochs after which more repetition improves the loss of an N-parameter model by < `tolerance`.

    The law's loss falls monotonically with epochs towards a limit (D' -> U (1 + R_D*)); this is
    the smallest epoch count within `tolerance` of that limit, with the loss there and the limit.
    """
    if not tolerance > 0:
        raise InputError("tolerance", f"{tolerance!r} must be > 0")
    p = law.full_params()
    n = np.asarray(params, dtype=float)
    unique = np.asarray(unique_tokens, dtype=float)
    rd = p["rd_star"]
    limit = law.predict(n, np.inf, unique)  # D -> inf: D' -> U (1 + R_D*), or inf for the base law
    d_eff_limit = unique * (1.0 + rd)
    d_eff_target = (p["B"] / (tolerance + p["B"] / d_eff_limit ** p["beta"])) ** (1.0 / p["beta"])
    if math.isfinite(rd):
        fraction = np.clip((d_eff_target / unique - 1.0) / rd, 0.0, None)
        repeats = -rd * np.log1p(-fraction)
    else:
        repeats = d_eff_target / unique - 1.0
    epochs = 1.0 + np.maximum(repeats, 0.0)
    return {"epochs": epochs, "loss": law.predict(n, epochs * unique, unique), "limit_loss": limit}


def loss_floor(law: Law, unique_tokens) -> np.ndarray:
    """The lowest loss any compute reaches with U unique tokens (both N' and D' saturate)."""
    p = law.full_params()
    unique = np.asarray(unique_tokens, dtype=float)
    n_eff = optimal_params_for_data(unique, p["A"], p["B"], p["alpha"], p["beta"]) * (1.0 + p["rn_star"])
    return p["E"] + p["A"] / n_eff ** p["alpha"] + p["B"] / (unique * (1.0 + p["rd_star"])) ** p["beta"]


def least_compute(law: Law, target_loss, unique_tokens, iterations: int = 64) -> np.ndarray:
    """The least C (FLOPs) whose optimal allocation under U reaches `target_loss`; inf when unreachable."""
    target = np.asarray(target_loss, dtype=float)
    unique = np.asarray(unique_tokens, dtype=float)
    shape = np.broadcast_shapes(target.shape, unique.shape)
    lo, hi = np.full(shape, math.log(6.0)), np.full(shape, math.log(MAX_FLOPS))
    params = law.full_params()
    reachable = allocate(law, MAX_FLOPS, unique).loss <= target
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        enough = optimal_allocation(params, np.exp(mid), unique).loss <= target
        hi, lo = np.where(enough, mid, hi), np.where(enough, lo, mid)
    return np.where(reachable, np.exp(hi), np.inf)
