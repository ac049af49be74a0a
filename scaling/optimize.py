"""A batched, box-constrained L-BFGS: K independent problems of the same shape advance in lockstep.

Each row has its own curvature history, its own backtracking (Armijo) line search along the
projected path and its own convergence test; converged rows drop out of the active set, so a
few slow starts don't keep thousands of finished ones busy. An optional halving schedule retires
the worse rows at given iterations (successive halving over multi-start runs). numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# fun(x, rows) -> (f, grad) for the parameter rows `x` (k, P) of problems `rows` (k,)
BatchedFunction = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

ARMIJO = 1e-4
FD_STEP = 1e-6  # relative step of `central_differences`

# values(x, rows) -> f for the parameter rows `x` (k, P) of problems `rows` (k,)
BatchedValues = Callable[[np.ndarray, np.ndarray], np.ndarray]


def central_differences(values: BatchedValues, step: float = FD_STEP) -> BatchedFunction:
    """A `BatchedFunction` whose gradient is a central difference: each row and its 2P neighbours in one call."""
    def fun(x, rows):
        k, p = x.shape
        h = step * np.maximum(np.abs(x), 1.0)
        shifts = np.concatenate([np.zeros((1, p)), np.eye(p), -np.eye(p)])  # (2P+1, P)
        points = (x[None, :, :] + shifts[:, None, :] * h[None, :, :]).reshape(-1, p)
        f = values(points, np.tile(rows, len(shifts))).reshape(len(shifts), k)
        with np.errstate(invalid="ignore"):
            grad = (f[1:p + 1] - f[p + 1:]).T / (2.0 * h)
        return f[0], np.where(np.isfinite(grad), grad, 0.0)
    return fun


class BatchResult(NamedTuple):
    """Per-row minimiser, objective, iterations used, whether it converged, whether it was retired."""

    x: np.ndarray
    f: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    retired: np.ndarray


def _project_direction(direction, x, lower, upper):
    """Zero the components that would push a variable sitting on a bound further out."""
    blocked = ((x <= lower) & (direction < 0)) | ((x >= upper) & (direction > 0))
    return np.where(blocked, 0.0, direction)


def _two_loop(grad, free, s_hist, y_hist, valid, gamma, order):
    """H @ grad restricted to the free variables of each row; history slots in `order` run newest first."""
    q = grad * free
    coefs, pairs = [], []
    for slot in order:
        s, y = s_hist[slot] * free, y_hist[slot] * free
        sy = np.einsum("kp,kp->k", s, y)
        use = valid[slot] & (sy > 1e-16 * np.einsum("kp,kp->k", y, y))
        rho = np.where(use, 1.0 / np.where(use, sy, 1.0), 0.0)
        coef = rho * np.einsum("kp,kp->k", s, q)
        q -= coef[:, None] * y
        coefs.append(coef)
        pairs.append((s, y, rho))
    r = gamma[:, None] * q
    for (s, y, rho), coef in zip(reversed(pairs), reversed(coefs)):
        r += s * (coef - rho * np.einsum("kp,kp->k", y, r))[:, None]
    return r * free


def batched_lbfgs(
    fun: BatchedFunction,
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    max_iter: int = 200,
    memory: int = 10,
    ftol: float = 1e-13,
    gtol: float = 1e-10,
    max_backtracks: int = 40,
    halving: dict[int, int] | None = None,
) -> BatchResult:
    """Minimise K independent problems from the rows of x0 (K, P) within [lower, upper] (P,).

    `halving` maps an iteration to how many rows may go on from there: the others (worst objective
    first among rows not yet retired) stop where they are and are flagged `retired`.
    """
    x = np.clip(np.array(x0, dtype=float), lower, upper)
    k, p = x.shape
    f, g = fun(x, np.arange(k))
    iterations = np.zeros(k, dtype=int)
    converged = np.zeros(k, dtype=bool)
    s_hist = np.zeros((memory, k, p))
    y_hist = np.zeros((memory, k, p))
    valid = np.zeros((memory, k), dtype=bool)
    gamma = 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1.0)
    retired = ~np.isfinite(f)
    active = np.flatnonzero(~retired)
    halving = halving or {}

    for it in range(max_iter):
        if it in halving:
            contenders = np.flatnonzero(~retired)
            dropped = contenders[np.argsort(f[contenders], kind="stable")[halving[it]:]]
            retired[dropped] = True
            active = active[~retired[active]]
        if active.size == 0:
            break
        order = [(it - 1 - j) % memory for j in range(min(it, memory))]
        xa, fa, ga = x[active], f[active], g[active]
        free = _project_direction(-ga, xa, lower, upper) != 0  # variables not pinned to a bound
        hist = (s_hist[:, active], y_hist[:, active], valid[:, active])
        direction = _project_direction(-_two_loop(ga, free, *hist, gamma[active], order), xa, lower, upper)
        slope = np.einsum("kp,kp->k", ga, direction)
        uphill = ~(slope < 0)
        if uphill.any():  # fall back to steepest descent and forget the history of those rows
            direction[uphill] = _project_direction(-gamma[active][uphill, None] * ga[uphill], xa[uphill], lower, upper)
            valid[:, active[uphill]] = False
        projected_grad = np.abs(_project_direction(-ga, xa, lower, upper)).max(axis=1)
        done = projected_grad <= gtol

        step = np.ones(active.size)
        accepted = done.copy()
        x_new, f_new, g_new = xa.copy(), fa.copy(), ga.copy()
        for _ in range(max_backtracks):
            trying = np.flatnonzero(~accepted)
            if trying.size == 0:
                break
            x_try = np.clip(xa[trying] + step[trying, None] * direction[trying], lower, upper)
            f_try, g_try = fun(x_try, active[trying])
            decrease = np.einsum("kp,kp->k", ga[trying], x_try - xa[trying])
            ok = np.isfinite(f_try) & (f_try <= fa[trying] + ARMIJO * decrease)
            hit = trying[ok]
            x_new[hit], f_new[hit], g_new[hit] = x_try[ok], f_try[ok], g_try[ok]
            accepted[hit] = True
            step[trying[~ok]] *= 0.5
        stalled = ~accepted  # no decrease found along the direction: as good as this method gets
        s, y = x_new - xa, g_new - ga
        sy = np.einsum("kp,kp->k", s, y)
        slot = it % memory
        good = sy > 1e-16 * np.maximum(np.einsum("kp,kp->k", y, y), 1e-300)
        s_hist[slot, active], y_hist[slot, active] = s, y
        valid[slot, active] = good
        gamma[active] = np.where(good, sy / np.maximum(np.einsum("kp,kp->k", y, y), 1e-300), gamma[active])

        small = (fa - f_new) <= ftol * np.maximum(np.maximum(np.abs(fa), np.abs(f_new)), 1e-12)
        x[active], f[active], g[active] = x_new, f_new, g_new
        iterations[active] += 1
        finished = done | stalled | (small & accepted & (it > 0))
        converged[active[finished]] = True
        active = active[~finished]
    return BatchResult(x, f, iterations, converged, retired)
