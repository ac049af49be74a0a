"""Synthetic multi-pool run tables drawn from a known pool law (shared by the pool tests)."""

from __future__ import annotations

import numpy as np

from scaling.pool_laws import pool_law_from_params
from scaling.runs import RunTable

BASE = dict(E=1.8, A=450.0, B=1200.0, alpha=0.34, beta=0.30)
MULTI_POOL_TRUTH = pool_law_from_params("multi-pool", ["web", "code", "books"], {
    **BASE, "rn_star": 4.0, "q.code": 0.6, "q.books": 1.5, "rd_star.web": 15.0, "rd_star.code": 6.0,
    "rd_star.books": 3.0})
QQT_TRUTH = pool_law_from_params("qqt", ["web", "code", "books"], {
    **BASE, "u.code": 0.7, "u.books": 1.3, "tau.web": 8.0, "tau.code": 3.0, "tau.books": 1.5})


def pool_runs(law, n: int = 400, seed: int = 1, noise: float = 0.01, max_epochs: float = 60.0) -> RunTable:
    """n runs: N log-uniform in [1e7, 3e9], D = N x [2, 200], Dirichlet shares, epochs per pool in [1, max_epochs]."""
    rng = np.random.default_rng(seed)
    params = np.exp(rng.uniform(np.log(1e7), np.log(3e9), n))
    tokens = params * np.exp(rng.uniform(np.log(2.0), np.log(200.0), n))
    drawn = tokens[:, None] * rng.dirichlet(np.ones(len(law.pools)), n)
    unique = drawn / np.exp(rng.uniform(0.0, np.log(max_epochs), drawn.shape))
    loss = law.predict(params, drawn, unique) * np.exp(rng.normal(0.0, noise, n))
    columns = {"params": params, "loss": loss}
    for j, pool in enumerate(law.pools):
        columns[f"tokens.{pool}"], columns[f"unique_tokens.{pool}"] = drawn[:, j], unique[:, j]
    return RunTable.from_columns(columns, source="synthetic")
