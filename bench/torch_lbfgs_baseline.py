"""Baseline for the repetition-fit benchmark: the published PyTorch L-BFGS procedure.

Muennighoff et al. (2023) fit the two repetition parameters R_D* and R_N* of the
data-constrained law with the base law (e, a, b, alpha, beta) held fixed, using
``torch.optim.LBFGS(lr=0.1, history_size=10, max_iter=20, line_search_fn="strong_wolfe")``
from 16 starts on a 4 x 4 grid over [0, 20] x [0, 20], 50 optimizer steps per start,
minimising the summed Huber loss (delta = 1e-3) between the log of the predicted loss and
the log of the observed loss. R_D* and R_N* are optimised directly (not in log space), in
float64. A start whose objective is NaN (a grid corner at exactly 0 divides 0 by 0 for runs
without repetition) simply loses; the best finite objective over the 16 starts is kept.

This module is our own re-implementation of that procedure. It is the reference the
benchmark compares ``scaling``'s fitter against (speed and objective reached); it is not
used by the library. Only torch, numpy and the standard library are imported.

``bench/bench_scaling.py`` runs it beside our fitter on the C4 runs.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

#: The authors' C4 base law (Muennighoff et al. 2023); log-space coefficients.
C4_BASE = dict(e=0.6254804, a=6.255414, b=7.3049974, alpha=0.3526596, beta=0.3526596)

HUBER_DELTA = 1e-3
GRID = np.linspace(0.0, 20.0, 4)
STEPS = 50


def fit_repetition_torch(params, tokens, unique_tokens, loss, base=C4_BASE):
    """Fit R_D* and R_N* with the base law fixed, the way the paper's authors did.

    Parameters
    ----------
    params, tokens, unique_tokens, loss:
        1-D array-likes of equal length: N (parameters), D (total training tokens),
        U (unique tokens) and the observed final loss of each run.
    base:
        The fixed base law in log-space form: ``dict(e=..., a=..., b=..., alpha=...,
        beta=...)`` with A = exp(a), B = exp(b), E = exp(e). Defaults to the C4 fit.

    Returns
    -------
    dict with ``rd_star`` and ``rn_star`` (floats), ``objective`` (the summed Huber loss at
    the returned point, NaN only if every start was NaN) and ``seconds`` (wall-clock time of
    the whole 16-start fit, tensor set-up included).
    """
    t0 = time.perf_counter()
    dt = torch.float64
    N = torch.as_tensor(np.asarray(params, dtype=np.float64), dtype=dt)
    D = torch.as_tensor(np.asarray(tokens, dtype=np.float64), dtype=dt)
    U = torch.as_tensor(np.asarray(unique_tokens, dtype=np.float64), dtype=dt)
    log_loss = torch.log(torch.as_tensor(np.asarray(loss, dtype=np.float64), dtype=dt))

    e, a, b = float(base["e"]), float(base["a"]), float(base["b"])
    alpha, beta = float(base["alpha"]), float(base["beta"])
    # Compute-optimal model size of the base law for U tokens seen once:
    # G = (alpha A / (beta B))^(1/(alpha+beta)), N_opt(U) = G (G U)^(beta/alpha).
    G = math.exp((math.log(alpha) + a - math.log(beta) - b) / (alpha + beta))
    U_N = torch.minimum(N, G * (G * U) ** (beta / alpha))
    R_D = torch.clamp(D / U - 1.0, min=0.0)
    R_N = torch.clamp(N / U_N - 1.0, min=0.0)
    e_col = torch.full_like(N, e)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        rd_star, rn_star = theta[0], theta[1]
        D_eff = U + U * rd_star * (1.0 - torch.exp(-R_D / rd_star))
        N_eff = U_N + U_N * rn_star * (1.0 - torch.exp(-R_N / rn_star))
        log_pred = torch.logsumexp(
            torch.stack([a - alpha * torch.log(N_eff), b - beta * torch.log(D_eff), e_col]),
            dim=0,
        )
        return torch.nn.functional.huber_loss(
            log_pred, log_loss, delta=HUBER_DELTA, reduction="sum"
        )

    best_obj, best_theta = math.inf, (math.nan, math.nan)
    for rd0 in GRID:
        for rn0 in GRID:
            theta = torch.tensor([rd0, rn0], dtype=dt, requires_grad=True)
            opt = torch.optim.LBFGS(
                [theta], lr=0.1, history_size=10, max_iter=20, line_search_fn="strong_wolfe"
            )

            def closure():
                opt.zero_grad()
                value = objective(theta)
                value.backward()
                return value

            for _ in range(STEPS):
                opt.step(closure)
            with torch.no_grad():
                value = float(objective(theta))
            if math.isfinite(value) and value < best_obj:
                best_obj = value
                best_theta = tuple(float(x) for x in theta.detach())

    return dict(
        rd_star=best_theta[0],
        rn_star=best_theta[1],
        objective=best_obj if math.isfinite(best_obj) else math.nan,
        seconds=time.perf_counter() - t0,
    )

